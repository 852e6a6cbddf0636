"""Load tests for carousel-sd-server (docs/server.md), with Locust (pip install locust).

Two user classes; name the one to run on the command line:

* ``ClosedLoopUser`` -- the test of Lightning AI's scheduler write-up: every user posts one prompt, waits for the image, posts again at
  once (no think time). Concurrency is fixed at ``--users``; the arrival rate adapts to the server (closed loop).
* ``OpenLoopUser`` -- arrivals that do not wait for the server: Poisson arrivals at ``--rate`` requests per second
  in total (split evenly over the users); each request is fired in its own greenlet, so a slow server builds a
  queue (and 429s once ``--max-queue`` is reached) instead of slowing the arrivals down. This is the honest test of
  latency under load.

Examples (server on port 8080)::

    locust --headless -f benchmarks/locustfile.py --host http://127.0.0.1:8080 \
        --users 4 --spawn-rate 4 --run-time 60s --csv build/locust ClosedLoopUser
    locust --headless -f benchmarks/locustfile.py --host http://127.0.0.1:8080 \
        --users 4 --spawn-rate 4 --run-time 60s --rate 2 --csv build/locust-open OpenLoopUser

Request knobs: ``--steps`` (default 20), ``--size`` (e.g. 32x32; default: the model's), ``--guidance`` (7.5),
``--prompt`` (a fixed prompt; default: one of a few shape prompts, chosen at random).
"""

import random

import gevent
from locust import HttpUser, constant, events, task

PROMPTS = [
    "a red circle on a blue background",
    "a green square on a white background",
    "a yellow triangle on a black background",
    "two blue circles on a red background",
]


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per image")
    parser.add_argument("--size", type=str, default="", help="WIDTHxHEIGHT (default: the model's size)")
    parser.add_argument("--guidance", type=float, default=7.5, help="guidance_scale")
    parser.add_argument("--prompt", type=str, default="", help="a fixed prompt (default: random shape prompts)")
    parser.add_argument("--rate", type=float, default=1.0, help="OpenLoopUser: total arrivals per second")


def _body(options):
    body = {
        "prompt": options.prompt or random.choice(PROMPTS),
        "steps": options.steps,
        "guidance_scale": options.guidance,
        "seed": random.randrange(2**31),
    }
    if options.size:
        body["size"] = options.size
    return body


def _generate(user):
    with user.client.post(
        "/v1/images/generations", json=_body(user.environment.parsed_options), name="generate", catch_response=True
    ) as response:
        if response.status_code != 200:
            response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        elif not response.json().get("data"):
            response.failure("no image in the response")
        else:
            response.success()


class ClosedLoopUser(HttpUser):
    """Posts one prompt, waits for the image, repeats with no think time."""

    wait_time = constant(0)

    @task
    def generate(self):
        _generate(self)


class OpenLoopUser(HttpUser):
    """Fires requests at exponential inter-arrival times (a Poisson process) without waiting for the responses."""

    wait_time = constant(0)

    @task
    def arrivals(self):
        options = self.environment.parsed_options
        users = max(1, options.num_users or 1)
        per_user_rate = options.rate / users
        gevent.sleep(random.expovariate(per_user_rate))
        gevent.spawn(_generate, self)
