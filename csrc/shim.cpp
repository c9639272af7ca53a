// What tch does not expose: the accelerator's memory figures, cache release and a wait on the
// current stream, page-locked copies without tch's deprecated device argument, and an
// in-place leaky ReLU with a slope. Every function catches C++ exceptions and reports them
// through `err`, so that nothing unwinds into Rust; with no GPU the accelerator calls fail
// cleanly (no device, or "no accelerator").
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/DeviceAccelerator.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <cstring>
#include <exception>

namespace {
int fail(const char* what, char* err, size_t len) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, what, len - 1);
    err[len - 1] = '\0';
  }
  return -1;
}

bool cuda_present() {
  auto acc = at::accelerator::getAccelerator(false);
  return acc.has_value() && at::accelerator::deviceCount() > 0;
}

// The accelerator's caching allocator, initialised. Until the first tensor on the device, the
// CUDA allocator has no per-device state, and reading its statistics throws ("Invalid device
// argument 0: did you call init?"); PyTorch's torch/accelerator/memory.py guards the same case.
// lazyInitDevice runs the backend's init (which sizes the allocator) once per process, as the
// first CUDA tensor would. Call only when cuda_present().
c10::DeviceAllocator* ready_allocator() {
  const auto type = at::accelerator::getAccelerator(true).value();
  at::globalContext().lazyInitDevice(type);
  return at::getDeviceAllocator(type);
}
}  // namespace

extern "C" {

int gpen_leaky_relu_(at::Tensor* t, double slope, char* err, size_t len) {
  try {
    at::leaky_relu_(*t, slope);
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, len);
  }
}

int gpen_accelerator_device_count() {
  try {
    return cuda_present() ? static_cast<int>(at::accelerator::deviceCount()) : 0;
  } catch (...) {
    return 0;
  }
}

// Device free and total bytes (cudaMemGetInfo).
int gpen_accelerator_memory_info(int device, uint64_t* free_bytes, uint64_t* total_bytes, char* err, size_t len) {
  try {
    if (!cuda_present()) return fail("no accelerator device", err, len);
    auto info = ready_allocator()->getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free_bytes = info.first;
    *total_bytes = info.second;
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, len);
  }
}

// The caching allocator's allocated, reserved and peak-allocated bytes (all pools).
int gpen_accelerator_allocator_stats(int device, uint64_t* allocated, uint64_t* reserved, uint64_t* peak,
                                     char* err, size_t len) {
  try {
    if (!cuda_present()) return fail("no accelerator device", err, len);
    auto stats = ready_allocator()->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
    *allocated = static_cast<uint64_t>(stats.allocated_bytes[all].current);
    *reserved = static_cast<uint64_t>(stats.reserved_bytes[all].current);
    *peak = static_cast<uint64_t>(stats.allocated_bytes[all].peak);
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, len);
  }
}

int gpen_accelerator_reset_peak(int device, char* err, size_t len) {
  try {
    if (!cuda_present()) return fail("no accelerator device", err, len);
    ready_allocator()->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, len);
  }
}

// Returns cached, unused blocks to the device.
int gpen_accelerator_empty_cache(char* err, size_t len) {
  try {
    if (!cuda_present()) return 0;
    // An allocator never used holds nothing to release: no reason to initialise the device.
    auto* allocator = at::getDeviceAllocator(at::accelerator::getAccelerator(true).value());
    if (!allocator->initialized()) return 0;
    allocator->emptyCache();
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, len);
  }
}

// `t` copied into page-locked memory of the current accelerator (`t.pin_memory()`). tch's
// `pin_memory` always passes a device, which libtorch 2.11 deprecates with a warning on every
// call (one a frame, on stderr).
int gpen_pin_memory(const at::Tensor* t, at::Tensor** out, char* err, size_t len) {
  try {
    *out = new at::Tensor(t->pin_memory());
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, len);
  }
}

// Waits for the work queued on libtorch's current stream of `device` (the calling thread's, the
// one every op of this crate is queued on): what a non-blocking copy to the host needs before
// the host reads it, and what a benchmark needs before it reads the clock. Not a device-wide
// synchronisation: other streams of the device are not waited for.
int gpen_accelerator_synchronize(int device, char* err, size_t len) {
  try {
    if (!cuda_present()) return fail("no accelerator device", err, len);
    at::accelerator::getCurrentStream(static_cast<c10::DeviceIndex>(device)).synchronize();
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what(), err, len);
  }
}
}
