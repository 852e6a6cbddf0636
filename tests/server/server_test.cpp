// Integration tests of carousel-sd-server: the Server class runs in-process on a free loopback port with the tiny
// fixture model (tests/data/models/sd-tiny, 32x32); a real HTTP client (httplib::Client) checks every endpoint, the
// SSE stream, asynchronous requests, and every error path (400 naming the field, 413, 404, 429 + Retry-After, 504,
// 503 while draining, cancellation on client disconnect). The server runs the CPU backend behind a
// diffusion::AnyBackend; images are checked against the library driven directly (same jobs through
// Pipeline<cpu::Backend> + StepBatcher, PNG-encoded), bit for bit.
#include <sd_server/server.hpp>
#include <sd_server/thread_pool.hpp>

#include <doctest/doctest.h>

#include <httplib.h>
#include <carousel/cpu/backend.hpp>
#include <carousel/load_signal.hpp>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
namespace srv = carousel::examples::sd_server;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const fs::path model_dir = fs::path(CAROUSEL_TEST_DATA_DIR) / "models" / "sd-tiny";

// A server on a free port, serving on its own thread; shut down (draining) on destruction.
struct Running {
  srv::Server server;
  int port;
  std::thread thread;

  explicit Running(srv::ServerOptions o = {}) : server(with_model(std::move(o)), cpu_backend()), port(server.bind()) {
    thread = std::thread([this] { server.run(); });
  }
  ~Running() {
    server.shutdown();
    thread.join();
  }

  // The tiny model on the CPU backend, as the server runs it.
  static srv::Backend cpu_backend(const std::string& device = "cpu") {
    return srv::Backend(device, carousel::cpu::Backend(model_dir));
  }

  static srv::ServerOptions with_model(srv::ServerOptions o) {
    o.model_dir = model_dir;
    o.port = 0;
    o.default_steps = 3;
    return o;
  }

  httplib::Client client(std::chrono::milliseconds read_timeout = 60s) const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(read_timeout);
    return c;
  }
};

httplib::Result post(const Running& r, const std::string& path, const json& body) {
  return r.client().Post(path.c_str(), body.dump(), "application/json");
}

// The images the library itself makes for these jobs (validated, run to completion), as base64 PNGs.
std::vector<std::string> reference_images(std::vector<carousel::diffusion::Job> jobs) {
  using Pipeline = carousel::diffusion::Pipeline<carousel::cpu::Backend>;
  carousel::cpu::Backend backend(model_dir);
  const auto folder = carousel::checkpoint::DiffusersFolder::open(model_dir);
  Pipeline pipeline(backend, carousel::diffusion::pipeline_scheduler_config(folder),
                    carousel::diffusion::pipeline_options(folder, backend.vae_scale_factor()));
  carousel::StepBatcher<Pipeline, carousel::diffusion::Job> batcher(pipeline);
  std::vector<carousel::Ticket<carousel::diffusion::Job>> tickets;
  for (auto& j : jobs) {
    pipeline.validate(j);
    tickets.push_back(batcher.submit(std::move(j)));
  }
  while (batcher.step_once()) {
  }
  std::vector<std::string> out;
  for (auto& t : tickets)
    out.push_back(carousel::examples::base64(carousel::examples::encode_png(t.get().image)));
  return out;
}

carousel::diffusion::Job job(const std::string& prompt, int steps, float guidance, std::uint64_t seed,
                             carousel::diffusion::SamplerKind sampler = carousel::diffusion::SamplerKind::ddim,
                             const std::string& negative = "") {
  carousel::diffusion::Job j;
  j.prompt = prompt;
  j.negative_prompt = negative;
  j.steps = steps;
  j.guidance_scale = guidance;
  j.seed = seed;
  j.sampler = sampler;
  return j;
}

struct Event {
  std::string name;
  json data;
};

// Parses a text/event-stream body into its events (event: NAME / data: JSON / blank line).
std::vector<Event> parse_sse(const std::string& text) {
  std::vector<Event> events;
  std::istringstream in(text);
  std::string line;
  Event e;
  while (std::getline(in, line)) {
    if (line.starts_with("event: ")) {
      e.name = line.substr(7);
    } else if (line.starts_with("data: ")) {
      e.data = json::parse(line.substr(6));
    } else if (line.empty() && !e.name.empty()) {
      events.push_back(e);
      e = Event{};
    }
  }
  return events;
}

// The value of an unlabelled metric line "name value", or -1.
double metric(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with(name + " ")) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

std::string metrics_text(const Running& r) {
  auto res = r.client().Get("/metrics");
  REQUIRE(res);
  return res->body;
}

// Waits (up to `limit`) until `done` holds; returns whether it did.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit = 20s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return done();
}

void check_error(const httplib::Result& res, int status, const std::string& field) {
  REQUIRE(res);
  CHECK(res->status == status);
  const json body = json::parse(res->body);
  REQUIRE(body.contains("error"));
  CHECK(body["error"]["message"].is_string());
  if (field.empty()) {
    CHECK(body["error"]["field"].is_null());
  } else {
    CHECK(body["error"]["field"] == field);
  }
}

std::string status_of(const Running& r, const std::string& id) {
  auto res = r.client().Get(("/v1/images/generations/" + id).c_str());
  REQUIRE(res);
  return json::parse(res->body)["status"];
}

}  // namespace

TEST_CASE("Server.Health.Page.Samplers") {
  srv::ServerOptions o;
  o.admission = carousel::Admission::cost_aware;
  Running r(o);
  auto health = r.client().Get("/health");
  REQUIRE(health);
  CHECK(health->status == 200);
  const json h = json::parse(health->body);
  CHECK(h["status"] == "ok");
  CHECK(h["model"] == model_dir.string());
  CHECK(h["bundled_model"] == false);
  CHECK(h["device"] == "cpu");
  CHECK(h["admission"] == "cost-aware");
  CHECK(h["version"] == carousel::version);
  CHECK(h["default_size"] == "32x32");
  CHECK(h["size_multiple"] == 2);

  auto page = r.client().Get("/");
  REQUIRE(page);
  CHECK(page->status == 200);
  CHECK(page->get_header_value("Content-Type").starts_with("text/html"));
  CHECK(page->body.find("<form") != std::string::npos);
  CHECK(page->body.find("/metrics") != std::string::npos);

  auto samplers = r.client().Get("/sdapi/v1/samplers");
  REQUIRE(samplers);
  const json sampler_list = json::parse(samplers->body);
  REQUIRE(sampler_list.size() == 4);
  CHECK(sampler_list[2]["name"] == "Euler");
  CHECK(sampler_list[3]["name"] == "DPM++ 2M");
  CHECK(h["samplers"] == json::array({"ddim", "ddpm", "euler", "dpm++2m"}));
  check_error(r.client().Get("/nope"), 404, "");
}

TEST_CASE("Server.Defaults.Guidance") {
  srv::ServerOptions o;
  o.default_guidance = 3.5;
  Running r(o);
  auto health = r.client().Get("/health");
  REQUIRE(health);
  CHECK(json::parse(health->body)["default_guidance"] == 3.5);
  auto res = post(r, "/v1/images/generations", {{"prompt", "x"}, {"steps", 2}, {"seed", 5}});
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const json body = json::parse(res->body);
  CHECK(body["parameters"]["guidance_scale"] == 3.5);
  CHECK(body["data"][0]["b64_json"] ==
        reference_images({job("x", 2, 3.5f, 5, carousel::diffusion::SamplerKind::ddim)})[0]);
  auto a1111 = post(r, "/sdapi/v1/txt2img", {{"prompt", "x"}, {"steps", 2}, {"seed", 5}});
  REQUIRE(a1111);
  REQUIRE(a1111->status == 200);
  CHECK(json::parse(a1111->body)["parameters"]["cfg_scale"] == 3.5);
}

TEST_CASE("Server.Samplers.EulerAndDpm") {
  Running r;
  auto openai = post(r, "/v1/images/generations", {{"prompt", "x"}, {"steps", 3}, {"seed", 9}, {"sampler", "euler"}});
  REQUIRE(openai);
  REQUIRE(openai->status == 200);
  CHECK(json::parse(openai->body)["data"][0]["b64_json"] ==
        reference_images({job("x", 3, 7.5f, 9, carousel::diffusion::SamplerKind::euler)})[0]);
  auto a1111 = post(r, "/sdapi/v1/txt2img",
                    {{"prompt", "x"}, {"steps", 3}, {"seed", 9}, {"cfg_scale", 7.5}, {"sampler_name", "DPM++ 2M"}});
  REQUIRE(a1111);
  REQUIRE(a1111->status == 200);
  const json body = json::parse(a1111->body);
  CHECK(body["parameters"]["sampler_name"] == "DPM++ 2M");
  CHECK(body["images"][0] == reference_images({job("x", 3, 7.5f, 9, carousel::diffusion::SamplerKind::dpm_solver)})[0]);
}

TEST_CASE("Server.OpenAI.Generate") {
  Running r;
  SUBCASE("n images with consecutive seeds match the library's images") {
    auto res = post(r, "/v1/images/generations",
                    {{"prompt", "a red square"},
                     {"n", 2},
                     {"size", "32x32"},
                     {"steps", 3},
                     {"guidance_scale", 4.0},
                     {"negative_prompt", "blue"},
                     {"seed", 42},
                     {"model", "ignored"}});
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const json body = json::parse(res->body);
    CHECK(body["created"].is_number_integer());
    CHECK(body["id"].get<std::string>().starts_with("gen-"));
    REQUIRE(body["data"].size() == 2);
    CHECK(body["data"][0]["seed"] == 42);
    CHECK(body["data"][1]["seed"] == 43);
    CHECK(body["timings"]["total_ms"].get<double>() > 0);
    const auto ref =
        reference_images({job("a red square", 3, 4.0f, 42, carousel::diffusion::SamplerKind::ddim, "blue"),
                          job("a red square", 3, 4.0f, 43, carousel::diffusion::SamplerKind::ddim, "blue")});
    CHECK(body["data"][0]["b64_json"] == ref[0]);
    CHECK(body["data"][1]["b64_json"] == ref[1]);
  }
  SUBCASE("response_format url: links to the images, served as PNG while the generation is kept") {
    auto res = post(r, "/v1/images/generations",
                    {{"prompt", "a red square"},
                     {"n", 2},
                     {"size", "32x32"},
                     {"steps", 3},
                     {"seed", 42},
                     {"response_format", "url"}});
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const json body = json::parse(res->body);
    REQUIRE(body["data"].size() == 2);
    const auto ref = reference_images({job("a red square", 3, 7.5f, 42), job("a red square", 3, 7.5f, 43)});
    const std::string prefix = "http://127.0.0.1:" + std::to_string(r.port);
    for (std::size_t i = 0; i < 2; ++i) {
      CHECK_FALSE(body["data"][i].contains("b64_json"));
      const std::string url = body["data"][i]["url"];
      REQUIRE(url.starts_with(prefix));
      auto image = r.client().Get(url.substr(prefix.size()).c_str());
      REQUIRE(image);
      CHECK(image->status == 200);
      CHECK(image->get_header_value("Content-Type") == "image/png");
      CHECK(carousel::examples::base64(std::vector<std::uint8_t>(image->body.begin(), image->body.end())) == ref[i]);
    }
    const std::string id = body["id"];
    check_error(r.client().Get(("/v1/images/generations/" + id + "/images/2.png").c_str()), 404, "index");
    check_error(r.client().Get("/v1/images/generations/gen-nope/images/0.png"), 404, "id");
  }
  SUBCASE("a random seed is drawn when absent and reported back") {
    auto res = post(r, "/v1/images/generations", {{"prompt", "x"}, {"steps", 2}, {"sampler", "DDPM"}});
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const json body = json::parse(res->body);
    const auto seed = body["data"][0]["seed"].get<std::uint64_t>();
    CHECK(body["parameters"]["seed"] == seed);
    CHECK(body["data"][0]["b64_json"] ==
          reference_images({job("x", 2, 7.5f, seed, carousel::diffusion::SamplerKind::ddpm)})[0]);
  }
}

TEST_CASE("Server.ConcurrentDecode") {
  srv::ServerOptions o;
  o.concurrent_decode = true;
  Running r(o);
  auto health = r.client().Get("/health");
  REQUIRE(health);
  CHECK(json::parse(health->body)["concurrent_decode"] == true);
  // Images decoded in the retire stage, beside the UNet steps of the others, are the library's images.
  auto res = post(r, "/v1/images/generations",
                  {{"prompt", "a red square"}, {"n", 3}, {"size", "32x32"}, {"steps", 3}, {"seed", 7}});
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const json body = json::parse(res->body);
  REQUIRE(body["data"].size() == 3);
  const auto ref = reference_images({job("a red square", 3, 7.5f, 7, carousel::diffusion::SamplerKind::ddim),
                                     job("a red square", 3, 7.5f, 8, carousel::diffusion::SamplerKind::ddim),
                                     job("a red square", 3, 7.5f, 9, carousel::diffusion::SamplerKind::ddim)});
  for (std::size_t i = 0; i < 3; ++i)
    CHECK(body["data"][i]["b64_json"] == ref[i]);
  auto metrics = r.client().Get("/metrics");
  REQUIRE(metrics);
  CHECK(metric(metrics->body, "carousel_retiring_requests") == 0);
}

TEST_CASE("Server.A1111.Progress") {
  Running r;
  auto progress = [&] {
    auto res = r.client().Get("/sdapi/v1/progress");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    return json::parse(res->body);
  };
  const json idle = progress();
  CHECK(idle["progress"] == 0.0);
  CHECK(idle["state"]["job"] == "");
  CHECK(idle["state"]["job_count"] == 0);
  auto started = post(r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 900}, {"async", true}});
  REQUIRE(started);
  const std::string id = json::parse(started->body)["id"];
  // The job advances: a later answer has more steps done, with the total, a share in (0, 1) and an ETA.
  json first;
  REQUIRE(eventually([&] {
    first = progress();
    return first["state"]["sampling_step"].get<int>() > 0;
  }));
  CHECK(first["state"]["job"] == "txt2img");  // never another client's id
  CHECK(first.dump().find(id) == std::string::npos);
  CHECK(first["state"]["job_count"] == 1);
  CHECK(first["state"]["sampling_steps"] == 900);
  json later;
  REQUIRE(eventually([&] {
    later = progress();
    return later["state"]["sampling_step"].get<int>() > first["state"]["sampling_step"].get<int>();
  }));
  CHECK(later["progress"].get<double>() > first["progress"].get<double>());
  CHECK(later["progress"].get<double>() < 1.0);
  CHECK(later["eta_relative"].get<double>() > 0.0);
  r.client().Delete(("/v1/images/generations/" + id).c_str());
  CHECK(eventually([&] { return progress()["state"]["job_count"] == 0; }));
}

TEST_CASE("Server.A1111.Txt2img") {
  Running r;
  SUBCASE("answers in AUTOMATIC1111's shape") {
    auto res = post(r, "/sdapi/v1/txt2img",
                    {{"prompt", "a green circle"},
                     {"negative_prompt", ""},
                     {"steps", 3},
                     {"cfg_scale", 1.0},
                     {"width", 32},
                     {"height", 16},
                     {"seed", 7},
                     {"sampler_name", "ddpm"},
                     {"batch_size", 2},
                     {"restore_faces", false}});
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const json body = json::parse(res->body);
    REQUIRE(body["images"].size() == 2);
    CHECK(body["parameters"]["sampler_name"] == "DDPM");
    CHECK_FALSE(body["parameters"].contains("restore_faces"));  // only the fields as understood are echoed
    const json info = json::parse(body["info"].get<std::string>());
    CHECK(info["all_seeds"] == json::array({7, 8}));
    CHECK(info["width"] == 32);
    CHECK(info["height"] == 16);
    auto a = job("a green circle", 3, 1.0f, 7, carousel::diffusion::SamplerKind::ddpm);
    auto b = a;
    b.seed = 8;
    a.width = b.width = 32;
    a.height = b.height = 16;
    const auto ref = reference_images({a, b});
    CHECK(body["images"][0] == ref[0]);
    CHECK(body["images"][1] == ref[1]);
  }
  SUBCASE("seed -1 draws a seed") {
    auto res = post(r, "/sdapi/v1/txt2img", {{"prompt", "p"}, {"steps", 2}, {"seed", -1}, {"sampler_name", "DDIM"}});
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const json info = json::parse(json::parse(res->body)["info"].get<std::string>());
    CHECK(info["seed"].get<std::int64_t>() >= 0);
  }
  SUBCASE("errors name A1111's fields") {
    check_error(post(r, "/sdapi/v1/txt2img", {{"prompt", "p"}, {"sampler_name", "Euler a"}}), 400, "sampler_name");
    check_error(post(r, "/sdapi/v1/txt2img", {{"prompt", "p"}, {"width", 33}}), 400, "width");
    check_error(post(r, "/sdapi/v1/txt2img", {{"prompt", "p"}, {"cfg_scale", 1000}}), 400, "cfg_scale");
    check_error(post(r, "/sdapi/v1/txt2img", {{"prompt", "p"}, {"batch_size", 100}}), 400, "batch_size");
  }
}

TEST_CASE("Server.Errors.Fields") {
  Running r;
  const std::string gen = "/v1/images/generations";
  auto raw = [&](const std::string& body) { return r.client().Post(gen.c_str(), body, "application/json"); };
  SUBCASE("malformed bodies") {
    check_error(raw("{not json"), 400, "body");
    check_error(raw("[1, 2]"), 400, "body");
    check_error(post(r, gen, json::object()), 400, "prompt");
  }
  SUBCASE("values") {
    check_error(post(r, gen, {{"prompt", "p"}, {"size", "33x32"}}), 400, "size");  // not a multiple of the VAE factor
    check_error(post(r, gen, {{"prompt", "p"}, {"size", "big"}}), 400, "size");
    check_error(post(r, gen, {{"prompt", "p"}, {"size", "32x32x1"}}), 400, "size");
    check_error(post(r, gen, {{"prompt", "p"}, {"steps", 0}}), 400, "steps");
    check_error(post(r, gen, {{"prompt", "p"}, {"steps", 5000}}), 400, "steps");
    check_error(post(r, gen, {{"prompt", "p"}, {"sampler", "euler_a"}}), 400, "sampler");
    check_error(post(r, gen, {{"prompt", "p"}, {"n", 9}}), 400, "n");
    check_error(post(r, gen, {{"prompt", "p"}, {"n", 0}}), 400, "n");
    check_error(post(r, gen, {{"prompt", "p"}, {"response_format", "png"}}), 400, "response_format");
    check_error(post(r, gen, {{"prompt", "p"}, {"guidance_scale", -1}}), 400, "guidance_scale");
    check_error(post(r, gen, {{"prompt", "p"}, {"eta", 2}}), 400, "eta");
    check_error(post(r, gen, {{"prompt", "p"}, {"timeout_ms", 0}}), 400, "timeout_ms");
  }
  SUBCASE("types") {
    check_error(post(r, gen, {{"prompt", 3}}), 400, "prompt");
    check_error(post(r, gen, {{"prompt", "p"}, {"n", "2"}}), 400, "n");
    check_error(post(r, gen, {{"prompt", "p"}, {"steps", 2.5}}), 400, "steps");
    check_error(post(r, gen, {{"prompt", "p"}, {"guidance_scale", "high"}}), 400, "guidance_scale");
    check_error(post(r, gen, {{"prompt", "p"}, {"seed", "x"}}), 400, "seed");
    check_error(post(r, gen, {{"prompt", "p"}, {"stream", "yes"}}), 400, "stream");
  }
  SUBCASE("a body over the limit is refused with 413") {
    const std::string big = json{{"prompt", std::string(2 << 20, 'a')}}.dump();
    auto res = raw(big);
    REQUIRE(res);
    CHECK(res->status == 413);
    CHECK(json::parse(res->body)["error"]["field"] == "body");
  }
  SUBCASE("unknown ids are 404") {
    check_error(r.client().Get((gen + "/gen-999").c_str()), 404, "id");
    check_error(r.client().Get((gen + "/gen-999/events").c_str()), 404, "id");
  }
  // The batcher's validate hook refused every invalid job at submit: none was admitted.
  CHECK(r.server.stats().admitted == 0);
  CHECK(r.server.stats().rejected == r.server.stats().submitted);
}

TEST_CASE("Server.Stream.Events") {
  Running r;
  auto res =
      post(r, "/v1/images/generations", {{"prompt", "p"}, {"n", 2}, {"steps", 4}, {"seed", 5}, {"stream", true}});
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->get_header_value("Content-Type").starts_with("text/event-stream"));
  const auto events = parse_sse(res->body);
  REQUIRE(events.size() == 1 + 2 * 4 + 1);
  CHECK(events.front().name == "queued");
  CHECK(events.front().data["seeds"] == json::array({5, 6}));
  std::map<int, int> last_step;
  for (std::size_t i = 1; i + 1 < events.size(); ++i) {
    const auto& e = events[i];
    REQUIRE(e.name == "progress");
    const int index = e.data["index"];
    CHECK(e.data["step"] == last_step[index] + 1);
    last_step[index] = e.data["step"];
    CHECK(e.data["total"] == 4);
    CHECK(e.data["eta_ms"].get<std::int64_t>() >= 0);
    if (e.data["step"] == e.data["total"]) CHECK(e.data["eta_ms"] == 0);
    CHECK(e.data["id"] == events.front().data["id"]);
  }
  CHECK(last_step[0] == 4);
  CHECK(last_step[1] == 4);
  CHECK(events.back().name == "done");
  const auto ref = reference_images({job("p", 4, 7.5f, 5), job("p", 4, 7.5f, 6)});
  CHECK(events.back().data["data"][0]["b64_json"] == ref[0]);
  CHECK(events.back().data["data"][1]["b64_json"] == ref[1]);
}

TEST_CASE("Server.Async.StatusEventsDelete") {
  Running r;
  auto res = post(r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 3}, {"seed", 1}, {"async", true}});
  REQUIRE(res);
  REQUIRE(res->status == 202);
  const std::string id = json::parse(res->body)["id"];
  CHECK(eventually([&] { return status_of(r, id) == "completed"; }));
  auto snapshot = r.client().Get(("/v1/images/generations/" + id).c_str());
  REQUIRE(snapshot);
  const json s = json::parse(snapshot->body);
  CHECK(s["progress"][0]["step"] == 3);
  CHECK(s["result"]["data"][0]["b64_json"] == reference_images({job("p", 3, 7.5f, 1)})[0]);

  // The event log replays from the start after the fact.
  auto replay = r.client().Get(("/v1/images/generations/" + id + "/events").c_str());
  REQUIRE(replay);
  const auto events = parse_sse(replay->body);
  REQUIRE(events.size() == 5);
  CHECK(events.back().name == "done");

  // DELETE cancels a running generation; its events end with an error.
  auto long_res = post(r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 900}, {"async", true}});
  REQUIRE(long_res);
  const std::string long_id = json::parse(long_res->body)["id"];
  CHECK(eventually([&] { return status_of(r, long_id) == "running"; }));
  auto del = r.client().Delete(("/v1/images/generations/" + long_id).c_str());
  REQUIRE(del);
  CHECK(del->status == 202);
  CHECK(eventually([&] { return status_of(r, long_id) == "cancelled"; }));
  auto tail = r.client().Get(("/v1/images/generations/" + long_id + "/events").c_str());
  REQUIRE(tail);
  CHECK(parse_sse(tail->body).back().name == "error");
  CHECK(r.server.stats().cancelled == 1);
}

TEST_CASE("Server.Disconnect.CancelsAtNextStep") {
  Running r;
  SUBCASE("SSE client hangs up after the first progress event") {
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/images/generations";
    req.body = json{{"prompt", "p"}, {"steps", 900}, {"stream", true}}.dump();
    req.set_header("Content-Type", "application/json");
    std::string seen;
    req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
      seen.append(data, n);
      return seen.find("event: progress") == std::string::npos;  // false: abort the connection
    };
    auto cli = r.client();
    cli.send(req);
    CHECK(seen.find("event: progress") != std::string::npos);
  }
  SUBCASE("blocking client gives up (read timeout)") {
    auto res = r.client(300ms).Post("/v1/images/generations", json{{"prompt", "p"}, {"steps", 900}}.dump(),
                                    "application/json");
    CHECK(!res);
  }
  SUBCASE("A1111 client gives up") {
    auto res =
        r.client(300ms).Post("/sdapi/v1/txt2img", json{{"prompt", "p"}, {"steps", 900}}.dump(), "application/json");
    CHECK(!res);
  }
  // The request is cancelled and its slot is free again.
  CHECK(eventually([&] {
    const auto m = metrics_text(r);
    return metric(m, "carousel_requests_cancelled_total") == 1 && metric(m, "carousel_active_requests") == 0;
  }));
  const auto s = r.server.stats();
  CHECK(s.completed == 0);
  CHECK(s.request_steps < 900);
}

TEST_CASE("Server.Timeout.504") {
  Running r;
  auto res = post(r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 900}, {"timeout_ms", 100}});
  check_error(res, 504, "timeout_ms");
  CHECK(json::parse(res->body)["error"]["type"] == "timeout");
  const auto s = r.server.stats();
  CHECK(s.expired + s.rejected == 1);
}

TEST_CASE("Server.QueueFull.429") {
  srv::ServerOptions o;
  o.max_batch = 1;
  o.max_queue = 1;
  Running r(o);
  const std::string gen = "/v1/images/generations";
  auto first = post(r, gen, {{"prompt", "p"}, {"steps", 900}, {"async", true}});
  REQUIRE(first);
  const std::string a = json::parse(first->body)["id"];
  CHECK(eventually([&] { return status_of(r, a) == "running"; }));
  auto second = post(r, gen, {{"prompt", "p"}, {"steps", 900}, {"async", true}});
  REQUIRE(second);
  REQUIRE(second->status == 202);
  const std::string b = json::parse(second->body)["id"];
  auto third = post(r, gen, {{"prompt", "p"}, {"steps", 3}});
  check_error(third, 429, "");
  CHECK(json::parse(third->body)["error"]["type"] == "queue_full");
  REQUIRE(third->has_header("Retry-After"));
  CHECK(std::stoi(third->get_header_value("Retry-After")) >= 1);
  // n images need n queue places: a partly refused request leaves nothing behind.
  check_error(post(r, "/sdapi/v1/txt2img", {{"prompt", "p"}, {"batch_size", 2}}), 429, "");
  r.client().Delete((gen + "/" + a).c_str());
  r.client().Delete((gen + "/" + b).c_str());
  CHECK(eventually([&] { return status_of(r, a) == "cancelled" && status_of(r, b) == "cancelled"; }));
}

TEST_CASE("Server.Metrics.Prometheus") {
  Running r;
  REQUIRE(post(r, "/v1/images/generations", {{"prompt", "p"}, {"n", 3}, {"steps", 2}}));
  REQUIRE(post(r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 0}}));
  const std::string m = metrics_text(r);
  CHECK(metric(m, "carousel_requests_submitted_total") == 3);
  CHECK(metric(m, "carousel_requests_completed_total") == 3);
  CHECK(metric(m, "carousel_queue_depth") == 0);
  CHECK(metric(m, "carousel_active_requests") == 0);
  CHECK(metric(m, "carousel_request_steps_total") == 6);
  CHECK(metric(m, "carousel_batch_occupancy") > 0);
  for (const char* name :
       {"carousel_requests_failed_total", "carousel_requests_cancelled_total", "carousel_requests_expired_total",
        "carousel_requests_rejected_total", "carousel_requests_preempted_total"}) {
    CHECK(metric(m, name) == 0);
  }
  // Histograms: cumulative buckets, +Inf equal to _count.
  for (const std::string h :
       {"carousel_request_latency_seconds", "carousel_queue_wait_seconds", "carousel_step_time_seconds"}) {
    std::istringstream in(m);
    std::string line;
    double previous = 0, inf = -1;
    int buckets = 0;
    while (std::getline(in, line)) {
      if (!line.starts_with(h + "_bucket{")) continue;
      const double v = std::stod(line.substr(line.rfind(' ') + 1));
      CHECK(v >= previous);
      previous = v;
      ++buckets;
      if (line.find("le=\"+Inf\"") != std::string::npos) inf = v;
    }
    CHECK(buckets == static_cast<int>(carousel::Histogram::bucket_count) + 1);
    CHECK(inf == metric(m, h + "_count"));
    CHECK(metric(m, h + "_sum") >= 0);
  }
  CHECK(metric(m, "carousel_request_latency_seconds_count") == 3);
  // The HTTP counters are updated once a response is written, so they may trail the client by a moment.
  CHECK(eventually([&] {
    const std::string now = metrics_text(r);
    return now.find(
               R"(carousel_http_requests_total{method="POST",endpoint="/v1/images/generations",status="200"} 1)") !=
               std::string::npos &&
           now.find(
               R"(carousel_http_requests_total{method="POST",endpoint="/v1/images/generations",status="400"} 1)") !=
               std::string::npos &&
           now.find(R"(carousel_http_requests_total{method="GET",endpoint="/metrics",status="200"})") !=
               std::string::npos;
  }));
}

TEST_CASE("Server.Shutdown.DrainsAndRefuses") {
  auto r = std::make_unique<Running>();
  // A request in flight when shutdown begins still completes.
  std::atomic<int> in_flight_status{0};
  std::thread client([&] {
    auto res = post(*r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 150}, {"seed", 3}});
    in_flight_status = res ? res->status : -1;
  });
  REQUIRE(eventually([&] { return r->server.stats().active == 1; }));
  std::thread stopper([&] { r->server.shutdown(); });
  REQUIRE(eventually([&] {
    auto h = r->client().Get("/health");
    return h && h->status == 503;
  }));
  auto refused = post(*r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 2}});
  check_error(refused, 503, "");
  CHECK(refused->has_header("Retry-After"));
  client.join();
  stopper.join();
  CHECK(in_flight_status == 200);
  CHECK(r->server.stats().completed == 1);
  r.reset();
}

TEST_CASE("Server.Device.FromBackend") {
  // /health reports the device name the backend was given; the server refuses to start without a backend.
  srv::Server server(Running::with_model({}), Running::cpu_backend("cpu-under-another-name"));
  CHECK(server.device() == "cpu-under-another-name");
  const int port = server.bind();
  std::thread t([&] { server.run(); });
  httplib::Client client("127.0.0.1", port);
  auto health = client.Get("/health");
  server.shutdown();
  t.join();
  REQUIRE(health);
  CHECK(json::parse(health->body)["device"] == "cpu-under-another-name");
  CHECK_THROWS_WITH_AS(srv::Server(Running::with_model({}), srv::Backend()),
                       "backend: the server needs a loaded model (the AnyBackend is empty)", std::invalid_argument);
}

TEST_CASE("Server.Shutdown.BeforeRun") {
  srv::Server server(Running::with_model({}), Running::cpu_backend());
  server.bind();
  server.shutdown();
  CHECK(server.run());  // returns at once instead of listening forever
}

TEST_CASE("Server.Priority.AdmitsHigherFirst") {
  srv::ServerOptions o;
  o.max_batch = 1;
  o.allow_priority = true;
  Running r(o);
  const std::string gen = "/v1/images/generations";
  auto running = post(r, gen, {{"prompt", "p"}, {"steps", 100}, {"async", true}});
  REQUIRE(running);
  const std::string a = json::parse(running->body)["id"];
  REQUIRE(eventually([&] { return status_of(r, a) == "running"; }));
  // Both wait behind the running one; the later but higher-priority request is admitted first.
  auto low = post(r, gen, {{"prompt", "p"}, {"steps", 10}, {"priority", 0}, {"async", true}});
  auto high = post(r, gen, {{"prompt", "p"}, {"steps", 10}, {"priority", 5}, {"async", true}});
  REQUIRE(low);
  REQUIRE(high);
  const std::string b = json::parse(low->body)["id"], c = json::parse(high->body)["id"];
  REQUIRE(eventually([&] { return status_of(r, b) == "completed" && status_of(r, c) == "completed"; }));
  auto result = [&](const std::string& id) {
    return json::parse(r.client().Get((gen + "/" + id).c_str())->body)["result"];
  };
  // first_step_ms counts from each request's own arrival, and the low-priority one arrived first.
  CHECK(result(c)["timings"]["first_step_ms"].get<double>() < result(b)["timings"]["first_step_ms"].get<double>());
}

namespace {

// One answer of the HAProxy agent on `port`: connect, read until the agent closes.
std::string agent_answer(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  std::string text;
  char buffer[64];
  for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;)
    text.append(buffer, static_cast<std::size_t>(n));
  close(fd);
  return text;
}

int http_status(const Running& r, const char* path) {
  auto res = r.client().Get(path);
  return res ? res->status : -1;
}

}  // namespace

TEST_CASE("Server.Probes.LiveAndReady") {
  srv::ServerOptions o;
  o.max_batch = 1;
  o.max_queue = 1;
  auto r = std::make_unique<Running>(o);
  CHECK(http_status(*r, "/health/live") == 200);
  CHECK(http_status(*r, "/health/ready") == 200);
  CHECK(json::parse(r->client().Get("/health/ready")->body)["status"] == "ready");

  SUBCASE("queue full: not ready until there is room again") {
    const std::string gen = "/v1/images/generations";
    const std::string a = json::parse(post(*r, gen, {{"prompt", "p"}, {"steps", 900}, {"async", true}})->body)["id"];
    CHECK(eventually([&] { return status_of(*r, a) == "running"; }));
    CHECK(http_status(*r, "/health/ready") == 200);  // running, nothing waiting
    const std::string b = json::parse(post(*r, gen, {{"prompt", "p"}, {"steps", 900}, {"async", true}})->body)["id"];
    auto full = r->client().Get("/health/ready");
    REQUIRE(full);
    CHECK(full->status == 503);
    CHECK(json::parse(full->body)["status"] == "queue_full");
    CHECK(http_status(*r, "/health/live") == 200);
    r->client().Delete((gen + "/" + b).c_str());
    CHECK(eventually([&] { return http_status(*r, "/health/ready") == 200; }));
    r->client().Delete((gen + "/" + a).c_str());
  }
  SUBCASE("draining: not ready, still live") {
    std::thread client([&] { post(*r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 150}}); });
    REQUIRE(eventually([&] { return r->server.stats().active == 1; }));
    std::thread stopper([&] { r->server.shutdown(); });
    REQUIRE(eventually([&] { return http_status(*r, "/health/ready") == 503; }));
    CHECK(json::parse(r->client().Get("/health/ready")->body)["status"] == "draining");
    CHECK(http_status(*r, "/health/live") == 200);
    client.join();
    stopper.join();
  }
  r.reset();
}

TEST_CASE("Server.Agent.WeightFromDrainEstimate") {
  srv::ServerOptions o;
  o.max_batch = 1;
  o.agent_port = 0;
  o.agent_target_seconds = 0.001;  // any measurable drain time pulls the weight far below 100%
  auto r = std::make_unique<Running>(o);
  REQUIRE(r->server.agent_port() > 0);
  CHECK(agent_answer(r->server.agent_port()) == "up 100%\n");  // idle

  const std::string gen = "/v1/images/generations";
  const std::string a = json::parse(post(*r, gen, {{"prompt", "p"}, {"steps", 900}, {"async", true}})->body)["id"];
  std::string loaded;
  CHECK(eventually([&] {
    loaded = agent_answer(r->server.agent_port());
    return r->server.stats().drain_seconds > 0 && loaded != "up 100%\n";
  }));
  // The weight is agent_weight_percent(drain, 0.001 s): 1% for any drain time of 0.1 s or more.
  CHECK(loaded ==
        "up " + std::to_string(carousel::agent_weight_percent(r->server.stats().drain_seconds, 0.001)) + "%\n");

  std::thread client([&] { post(*r, gen, {{"prompt", "p"}, {"steps", 150}}); });
  std::thread stopper([&] {
    eventually([&] { return r->server.stats().submitted == 2; });
    r->client().Delete((gen + "/" + a).c_str());
    r->server.shutdown();
  });
  CHECK(eventually([&] { return agent_answer(r->server.agent_port()) == "drain\n"; }));
  client.join();
  stopper.join();
  r.reset();
}

TEST_CASE("Server.Metrics.DrainSignal") {
  srv::ServerOptions o;
  o.max_batch = 1;
  Running r(o);
  std::string m = metrics_text(r);
  CHECK(metric(m, "carousel_remaining_request_steps") == 0);
  CHECK(metric(m, "carousel_drain_seconds") == 0);
  CHECK(m.find("# TYPE carousel_remaining_request_steps gauge") != std::string::npos);
  CHECK(m.find("# TYPE carousel_drain_seconds gauge") != std::string::npos);

  const std::string gen = "/v1/images/generations";
  const std::string a = json::parse(post(r, gen, {{"prompt", "p"}, {"steps", 900}, {"async", true}})->body)["id"];
  const std::string b = json::parse(post(r, gen, {{"prompt", "p"}, {"steps", 500}, {"async", true}})->body)["id"];
  // Running 900 steps and 500 queued: between 500 and 1400 steps left, and a positive drain time once measured.
  CHECK(eventually([&] {
    m = metrics_text(r);
    return metric(m, "carousel_drain_seconds") > 0;
  }));
  const double left = metric(m, "carousel_remaining_request_steps");
  CHECK(left > 500);
  CHECK(left < 1400);
  r.client().Delete((gen + "/" + a).c_str());
  r.client().Delete((gen + "/" + b).c_str());
  CHECK(eventually([&] {
    m = metrics_text(r);
    return metric(m, "carousel_remaining_request_steps") == 0 && metric(m, "carousel_drain_seconds") == 0;
  }));
}

namespace {

// A raw loopback connection that sends `text` and keeps the socket open (a client that does not read, or reads
// slowly); closed on destruction.
struct RawClient {
  int fd = -1;
  RawClient(int port, const std::string& text) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::send(fd, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size()));
  }
  // Reads until `needle` arrived (or 10 s); returns what was read.
  std::string read_until(const std::string& needle) const {
    std::string got;
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    while (got.find(needle) == std::string::npos) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<std::size_t>(n));
    }
    return got;
  }
  ~RawClient() {
    if (fd >= 0) ::close(fd);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;
};

// The time /health takes to answer.
std::chrono::milliseconds health_time(const Running& r) {
  const auto t0 = std::chrono::steady_clock::now();
  auto res = r.client(5s).Get("/health");
  const auto t = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  REQUIRE(res);
  CHECK(res->status == 200);
  return t;
}

}  // namespace

TEST_CASE("Server.Hostile.Bodies") {
  Running r;
  const std::string gen = "/v1/images/generations";
  SUBCASE("JSON nested deeper than the limit is refused with 400 before parsing, on both APIs") {
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    for (const std::string path : {"/sdapi/v1/txt2img", "/v1/images/generations"}) {
      CAPTURE(path);
      check_error(r.client().Post(path.c_str(), R"({"prompt": "p", "x": )" + deep + "}", "application/json"), 400,
                  "body");
    }
    const std::string shallow = R"({"prompt": "p", "steps": 2, "x": [[["[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]]]})";
    auto ok = r.client().Post("/sdapi/v1/txt2img", shallow, "application/json");
    REQUIRE(ok);
    CHECK(ok->status == 200);  // brackets inside strings do not count
    health_time(r);
  }
  SUBCASE("A1111 echoes the parsed fields only, never the raw body") {
    json body = {{"prompt", "p"}, {"steps", 2}, {"junk", json::array()}};
    for (int i = 0; i < 1000; ++i)
      body["junk"].push_back(json::object());
    auto res = post(r, "/sdapi/v1/txt2img", body);
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const json parameters = json::parse(res->body)["parameters"];
    CHECK_FALSE(parameters.contains("junk"));
    CHECK(parameters["steps"] == 2);
  }
  SUBCASE("a chunked body over the limit is refused with 413, as one with a Content-Length is") {
    const std::string big = json{{"prompt", std::string(2 << 20, 'a')}}.dump();
    auto res = r.client().Post(
        gen.c_str(),
        [&](std::size_t offset, httplib::DataSink& sink) {
          const std::size_t n = std::min<std::size_t>(64 << 10, big.size() - offset);
          sink.write(big.data() + offset, n);
          if (offset + n == big.size()) sink.done();
          return true;
        },
        "application/json");
    if (res) {  // the server may close the connection before the client finished sending
      CHECK(res->status == 413);
    }
    CHECK(r.server.stats().submitted == 0);
    health_time(r);
  }
  SUBCASE("more header lines than the cap are answered 431") {
    httplib::Headers many;
    for (int i = 0; i < 200; ++i)
      many.emplace("X-Filler-" + std::to_string(i), std::string(100, 'x'));
    auto res = r.client().Get("/health", many);
    REQUIRE(res);
    CHECK(res->status == 431);
  }
  SUBCASE("a cross-origin simple request (text/plain) runs nothing: 415") {
    auto res = r.client().Post(gen.c_str(), json{{"prompt", "p"}}.dump(), "text/plain");
    check_error(res, 415, "Content-Type");
    CHECK(r.server.stats().submitted == 0);
  }
}

TEST_CASE("Server.Hostile.Values") {
  Running r;
  const std::string gen = "/v1/images/generations";
  SUBCASE("sizes that are not two positive integers are refused") {
    for (const char* size : {"0x0", " 32x 32", "+32x32", "32x-32", "32x", "x32", "032x0"}) {
      CAPTURE(size);
      check_error(post(r, gen, {{"prompt", "p"}, {"size", size}}), 400, "size");
    }
  }
  SUBCASE("the steps message states the real limit") {
    auto res = post(r, gen, {{"prompt", "p"}, {"steps", 5000}});
    check_error(res, 400, "steps");
    CHECK(json::parse(res->body)["error"]["message"].get<std::string>().find("1000") != std::string::npos);
    CHECK(json::parse(res->body)["error"]["message"].get<std::string>().find("10000") == std::string::npos);
  }
  SUBCASE("expensive requests are refused before any work: the side limit and the work budget") {
    check_error(post(r, gen, {{"prompt", "p"}, {"size", "2048x2048"}, {"steps", 1000}}), 400, "size");
    check_error(post(r, "/sdapi/v1/txt2img", {{"prompt", "p"}, {"width", 128}, {"height", 32}}), 400, "width");
    auto res = post(r, gen, {{"prompt", "p"}, {"size", "64x64"}, {"steps", 999}, {"n", 8}});
    check_error(res, 400, "steps");
    CHECK(json::parse(res->body)["error"]["type"] == "too_expensive");
    CHECK(r.server.stats().admitted == 0);
  }
  SUBCASE("priority from a client is ignored unless the operator allows it") {
    auto res = post(r, gen, {{"prompt", "p"}, {"steps", 2}, {"priority", 50}});
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(json::parse(res->body)["parameters"]["priority"] == 0);
  }
  SUBCASE("image URLs use the server's address, never the client's Host header") {
    httplib::Headers host = {{"Host", "evil.example"}};
    auto res = r.client().Post(
        gen.c_str(), host, json{{"prompt", "p"}, {"steps", 2}, {"response_format", "url"}}.dump(), "application/json");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const std::string url = json::parse(res->body)["data"][0]["url"];
    CHECK(url.starts_with("http://127.0.0.1:" + std::to_string(r.port) + "/"));
  }
}

TEST_CASE("Server.Hostile.Privacy") {
  Running r;
  const std::string gen = "/v1/images/generations";
  auto id_of = [&] {
    auto res = post(r, gen, {{"prompt", "p"}, {"steps", 2}, {"async", true}});
    REQUIRE(res);
    REQUIRE(res->status == 202);
    return json::parse(res->body)["id"].get<std::string>();
  };
  const std::string a = id_of(), b = id_of();
  auto is_private_id = [](const std::string& id) {
    return id.size() == 36 && id.rfind("gen-", 0) == 0 && std::all_of(id.begin() + 4, id.end(), [](char c) {
             return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
  };
  CHECK(is_private_id(a));
  CHECK(a != b);
  CHECK(eventually([&] { return status_of(r, a) == "completed" && status_of(r, b) == "completed"; }));
  // /metrics labels a status request by its route, not as the image endpoint.
  auto m = r.client().Get("/metrics");
  REQUIRE(m);
  CHECK(m->body.find("endpoint=\"/v1/images/generations/{id}\",status=\"200\"") != std::string::npos);
}

TEST_CASE("Server.Hostile.Watchers") {
  srv::ServerOptions o;
  o.max_watchers_per_generation = 2;
  o.max_watchers = 3;
  Running r(o);
  const std::string gen = "/v1/images/generations";
  auto started = [&] {
    auto res = post(r, gen, {{"prompt", "p"}, {"steps", 900}, {"async", true}});
    REQUIRE(res);
    REQUIRE(res->status == 202);
    return json::parse(res->body)["id"].get<std::string>();
  };
  const std::string a = started(), b = started();
  auto watch = [&](const std::string& id) {
    return std::make_unique<RawClient>(r.port, "GET " + gen + "/" + id + "/events HTTP/1.1\r\nHost: x\r\n\r\n");
  };
  std::vector<std::unique_ptr<RawClient>> held;
  held.push_back(watch(a));
  held.push_back(watch(a));
  for (auto& h : held)
    CHECK(h->read_until("event: queued").find("200 OK") != std::string::npos);
  SUBCASE("beyond the per-generation cap: 503") {
    auto third = watch(a);
    CHECK(third->read_until("\r\n\r\n").find(" 503 ") != std::string::npos);
  }
  SUBCASE("beyond the server-wide cap: 503") {
    held.push_back(watch(b));
    CHECK(held.back()->read_until("event: queued").find("200 OK") != std::string::npos);
    auto fourth = watch(b);
    CHECK(fourth->read_until("\r\n\r\n").find(" 503 ") != std::string::npos);
  }
  CHECK(health_time(r) < 1s);
  held.clear();  // closed streams give their places back
  CHECK(eventually([&] {
    auto w = watch(a);
    return w->read_until("event: queued").find("200 OK") != std::string::npos;
  }));
  r.client().Delete((gen + "/" + a).c_str());
  r.client().Delete((gen + "/" + b).c_str());
}

TEST_CASE("Server.Hostile.SlowClients") {
  srv::ServerOptions o;
  o.request_read_timeout = 1s;
  Running r(o);
  // 100 connections that each trickle a header line, a byte every 200 ms: each read is quick, so only the deadline
  // on the whole request ends them (cpp-httplib's own limit is 5 s per read).
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<RawClient>> slow;
  for (int i = 0; i < 100; ++i)
    slow.push_back(std::make_unique<RawClient>(r.port, "GET /health HTTP/1.1\r\nHost: x\r\n"));
  const auto t0 = std::chrono::steady_clock::now();
  std::thread trickle([&] {
    while (!stop) {
      for (auto& c : slow)
        ::send(c->fd, "X", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      std::this_thread::sleep_for(200ms);
    }
  });
  // A body that never completes is held to the same deadline.
  RawClient slow_body(r.port,
                      "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 100\r\n\r\n{\"prompt\":");
  CHECK(health_time(r) < 1s);
  auto m = r.client(5s).Get("/metrics");
  REQUIRE(m);
  CHECK(m->status == 200);
  // Every slow connection is closed by the server: a read ends (EOF or reset) without a response.
  std::size_t closed = 0;
  for (auto& c : slow)
    closed += c->read_until("\r\n\r\n").find("HTTP/1.1 200") == std::string::npos;
  CHECK(closed == slow.size());
  CHECK(slow_body.read_until("\r\n\r\n").find("HTTP/1.1 2") == std::string::npos);
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took < 4s);  // the deadline (1 s) and a few scan periods, well inside cpp-httplib's 5 s per-read limit
  stop = true;
  trickle.join();
  CHECK(eventually([&] { return metric(metrics_text(r), "carousel_http_slow_requests_closed_total") >= 101; }));
  // A request sent at an ordinary pace is served as before.
  auto res = post(r, "/v1/images/generations", {{"prompt", "p"}, {"steps", 2}});
  REQUIRE(res);
  CHECK(res->status == 200);
}

TEST_CASE("Server.Disconnect.HalfCloseKeepsJob") {
  Running r;
  const std::string body = json{{"prompt", "p"}, {"steps", 60}}.dump();
  const std::string head =
      "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n";
  // A client that shuts its sending side and waits: told apart from a close by an interim 100 Continue, then
  // answered in full.
  RawClient c(r.port, head + body);
  REQUIRE(::shutdown(c.fd, SHUT_WR) == 0);
  const std::string got = c.read_until("\"b64_json\"");
  CHECK(got.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"));
  CHECK(got.find("\"b64_json\"") != std::string::npos);
  CHECK(eventually([&] { return r.server.stats().completed == 1; }));
  CHECK(r.server.stats().cancelled == 0);
  // A client that closes its socket after sending is still a hang-up: the reset to the interim response cancels.
  { RawClient gone(r.port, head + body); }
  CHECK(eventually([&] { return r.server.stats().cancelled == 1; }));
}

TEST_CASE("Server.ThreadPool.GrowsAndShrinks") {
  srv::ElasticThreadPool pool(4, 1, 100ms);
  CHECK(pool.threads() == 1);
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> started{0}, ran{0};
  for (int i = 0; i < 6; ++i)
    pool.enqueue([&] {
      ++started;
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return release; });
      ++ran;
    });
  // One thread per blocked task up to the cap; the rest wait their turn.
  CHECK(eventually([&] { return started == 4; }));
  CHECK(pool.threads() == 4);
  std::this_thread::sleep_for(50ms);
  CHECK(started == 4);
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  CHECK(eventually([&] { return ran == 6; }));
  // Threads above the kept one end once idle (they are joined at the next enqueue or at shutdown).
  CHECK(eventually([&] { return pool.threads() == 1; }));
  pool.enqueue([&] { ++ran; });
  CHECK(eventually([&] { return ran == 7; }));
  pool.shutdown();
  CHECK(ran == 7);
}

TEST_CASE("Server.Hostile.Kept") {
  const std::string gen = "/v1/images/generations";
  auto finished_id = [](const Running& r, const std::string& path) {
    auto res = post(r, path, {{"prompt", "p"}, {"steps", 2}, {"async", true}});
    REQUIRE(res);
    REQUIRE(res->status == 202);
    const std::string id = json::parse(res->body)["id"];
    REQUIRE(eventually([&] { return status_of(r, id) == "completed"; }));
    return id;
  };
  auto kept = [&](const Running& r, const std::string& id) {
    auto res = r.client().Get((gen + "/" + id).c_str());
    REQUIRE(res);
    return res->status == 200;
  };
  SUBCASE("by bytes: the oldest finished generation goes once the kept ones hold more than the budget") {
    srv::ServerOptions o;
    o.keep_finished.bytes = 1;  // less than any generation
    Running r(o);
    const std::string a = finished_id(r, gen);
    CHECK(kept(r, a));  // eviction runs when a generation registers
    const std::string b = finished_id(r, gen);
    CHECK_FALSE(kept(r, a));
    CHECK(kept(r, b));
  }
  SUBCASE("by age") {
    srv::ServerOptions o;
    o.keep_finished.age = std::chrono::seconds(0);
    Running r(o);
    const std::string a = finished_id(r, gen);
    std::this_thread::sleep_for(20ms);
    finished_id(r, gen);
    CHECK_FALSE(kept(r, a));
  }
  SUBCASE("within the limits both are kept, and the done event carries the one stored result") {
    Running r;
    const std::string a = finished_id(r, gen);
    finished_id(r, gen);
    REQUIRE(kept(r, a));
    auto replay = r.client().Get((gen + "/" + a + "/events").c_str());
    REQUIRE(replay);
    const auto events = parse_sse(replay->body);
    REQUIRE(!events.empty());
    CHECK(events.back().name == "done");
    auto status = r.client().Get((gen + "/" + a).c_str());
    CHECK(events.back().data == json::parse(status->body)["result"]);
  }
}

TEST_CASE("Server.Model.SingleFileCheckpoint") {
  // The tiny model written as one original-layout .safetensors file (tools/make_single_file_fixtures.py), its configs
  // from the folder (the tiny model's norm groups are not the SD 1.x family's): the same image as the folder's.
  const fs::path file = fs::path(CAROUSEL_TEST_DATA_DIR) / "models" / "single-file" / "sd1-tiny.safetensors";
  srv::ServerOptions o = Running::with_model({});
  o.model_dir = file;
  o.single_file.config = model_dir;
  const auto folder = carousel::checkpoint::DiffusersFolder::open(file, o.single_file);
  srv::Server server(o, srv::Backend("cpu", carousel::cpu::Backend(folder)));
  const int port = server.bind();
  std::thread t([&] { server.run(); });
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60s);
  const json body = {{"prompt", "a red circle"}, {"steps", 3}, {"seed", 11}};
  auto single = client.Post("/v1/images/generations", body.dump(), "application/json");
  server.shutdown();
  t.join();
  Running folder_server;
  auto reference = post(folder_server, "/v1/images/generations", body);
  REQUIRE(single);
  REQUIRE(reference);
  REQUIRE(single->status == 200);
  REQUIRE(reference->status == 200);
  CHECK(json::parse(single->body)["data"][0]["b64_json"] == json::parse(reference->body)["data"][0]["b64_json"]);
}
