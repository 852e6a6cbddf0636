#pragma once
/// \file carousel/carousel.hpp
/// The core of carousel: step-level batching of iterative models. Includes no diffusion, backend or CUDA header.
///
/// \code
///   #include <carousel/carousel.hpp>
///   carousel::StepBatcher<Model, Job> batcher{model, carousel::Options{.max_batch_size = 8}};
/// \endcode

#include "carousel/errors.hpp"
#include "carousel/iteration.hpp"
#include "carousel/load_signal.hpp"
#include "carousel/manual_clock.hpp"
#include "carousel/options.hpp"
#include "carousel/progress.hpp"
#include "carousel/request_slot.hpp"
#include "carousel/request_status.hpp"
#include "carousel/stats.hpp"
#include "carousel/step_batcher.hpp"
#include "carousel/step_model.hpp"
#include "carousel/submit_options.hpp"
#include "carousel/ticket.hpp"
#include "carousel/version.hpp"
