// Builds against a core-only installed carousel package: one request through a scheduler thread.
#include <carousel/carousel.hpp>

#include <cstdio>
#include <span>

struct Job {
  int total;
  int done = 0;
};

struct Model {
  void step(std::span<Job* const> batch) {
    for (Job* j : batch)
      ++j->done;
  }
  bool finished(const Job& j) const { return j.done >= j.total; }
};

int main() {
  Model model;
  carousel::StepBatcher<Model, Job> batcher{model, carousel::Options{.max_batch_size = 4}};
  batcher.start();
  const Job j = batcher.submit(Job{12}).get();
  batcher.stop();
  std::printf("carousel %s (core): %d steps\n", carousel::version, j.done);
  return j.done == 12 ? 0 : 1;
}
