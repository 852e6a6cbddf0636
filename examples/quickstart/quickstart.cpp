// carousel quickstart: a toy model driven by StepBatcher, printing the batch of every iteration.
//
// Reproduces the example log of Lightning AI's scheduler write-up (30 steps per request, max batch 4): first
// continuous batching, where requests join at the next step and leave as soon as they finish; then static batching,
// where four requests run as one batch.
#include <carousel/carousel.hpp>

#include <cstdio>
#include <map>
#include <span>
#include <string>

struct Job {
  char name;
  int total;
  int done = 0;
};

struct ToyModel {
  void step(std::span<Job* const> batch) {
    for (Job* j : batch)
      ++j->done;
  }
  bool finished(const Job& j) const { return j.done >= j.total; }
  std::size_t total_steps(const Job& j) const { return static_cast<std::size_t>(j.total); }
};

using Batcher = carousel::StepBatcher<ToyModel, Job>;

static void print_batches(Batcher& batcher) {
  batcher.set_observer([](const carousel::Iteration<Job>& it) {
    std::string line = "[";
    for (const auto* slot : it.batch) {
      if (line.size() > 1) line += ", ";
      line += std::to_string(slot->steps_done());
    }
    std::printf("%s]\n", line.c_str());
  });
}

// Steps until the ticket is ready, then prints its response.
static void run_until_done(Batcher& batcher, carousel::Ticket<Job>& t, int max_iterations = 1000) {
  for (int i = 0; i < max_iterations && !t.ready(); ++i)
    batcher.step_once();
  Job j = t.get();
  std::printf("%c responds (%d steps)\n", j.name, j.done);
}

int main() {
  ToyModel model;
  {
    std::printf("== continuous batching (join-anytime, leave-on-finish), max batch 4 ==\n");
    Batcher batcher{model, carousel::Options{.max_batch_size = 4}};
    print_batches(batcher);
    std::map<char, carousel::Ticket<Job>> t;
    auto arrive = [&](char name) {
      std::printf("%c arrives\n", name);
      t[name] = batcher.submit(Job{name, 30});
    };
    arrive('A');
    for (int i = 0; i < 24; ++i)
      batcher.step_once();
    arrive('B');
    for (int i = 0; i < 5; ++i)
      batcher.step_once();
    arrive('C');
    run_until_done(batcher, t['A']);
    batcher.step_once();
    arrive('D');
    run_until_done(batcher, t['B']);
    run_until_done(batcher, t['C']);
    run_until_done(batcher, t['D']);
    batcher.stop();
  }
  {
    std::printf("== static batching, max batch 4, four requests arriving together ==\n");
    Batcher batcher{model, carousel::Options{.max_batch_size = 4, .admission = carousel::Admission::static_batch}};
    print_batches(batcher);
    std::map<char, carousel::Ticket<Job>> t;
    for (char name : {'A', 'B', 'C', 'D'})
      t[name] = batcher.submit(Job{name, 30});
    while (!t['D'].ready())
      batcher.step_once();
    for (char name : {'A', 'B', 'C', 'D'})
      run_until_done(batcher, t[name]);
    batcher.stop();
  }
  {
    std::printf("== the same with a scheduler thread ==\n");
    Batcher batcher{model, carousel::Options{.max_batch_size = 4}};
    batcher.start();
    auto a = batcher.submit(Job{'A', 30});
    auto b = batcher.submit(Job{'B', 20});
    const Job ja = a.get(), jb = b.get();
    std::printf("%c: %d steps, %c: %d steps\n", ja.name, ja.done, jb.name, jb.done);
    batcher.stop();
    const carousel::Stats s = batcher.stats();
    std::printf("completed %llu, iterations %llu, mean batch size %.2f\n", static_cast<unsigned long long>(s.completed),
                static_cast<unsigned long long>(s.iterations), s.mean_batch_size);
  }
}
