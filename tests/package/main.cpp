// Builds against the installed carousel package: one request through a scheduler thread (carousel::carousel), and
// one image of the tiny fixture model through the diffusion Pipeline on the CPU backend (carousel::cpu).
#include <carousel/carousel.hpp>
#include <carousel/cpu/backend.hpp>
#include <carousel/diffusion/pipeline.hpp>

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
  std::printf("carousel %s: %d steps\n", carousel::version, j.done);

  namespace cd = carousel::diffusion;
  const auto folder = carousel::checkpoint::DiffusersFolder::open(CAROUSEL_CONSUMER_MODEL_DIR);
  const carousel::cpu::Backend backend(folder);
  cd::Pipeline<carousel::cpu::Backend> pipeline(backend, cd::pipeline_scheduler_config(folder),
                                                cd::pipeline_options(folder, backend.vae_scale_factor()));
  carousel::StepBatcher<cd::Pipeline<carousel::cpu::Backend>, cd::Job> images{pipeline};
  cd::Job request;
  request.prompt = "a red circle";
  request.steps = 3;
  pipeline.validate(request);
  images.start();
  const cd::Job image = images.submit(std::move(request)).get();
  images.stop();
  std::printf("pipeline: %dx%d image, %zu bytes\n", image.image.width, image.image.height, image.image.rgb.size());
  const bool ok =
      j.done == 12 && image.image.rgb.size() == static_cast<std::size_t>(3 * image.image.width * image.image.height);
  return ok ? 0 : 1;
}
