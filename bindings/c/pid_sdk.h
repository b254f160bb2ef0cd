/* pid_sdk.h: the C ABI of pid-sdk. Decode latents into images with the AOTInductor packages of an engine folder,
 * without Python. Reference: docs/embedding.md.
 *
 * Rules:
 *  - Every function returns PID_OK (0) or an error code; no C++ exception crosses this ABI. After an error,
 *    pid_last_error() gives the message: what was received, what was expected and how to fix it (the text a
 *    Python PiDError carries).
 *  - Threads: calls on different handles run in parallel; calls on one handle are serialised by the handle (one
 *    decode at a time per handle: open one handle per thread to decode in parallel). pid_last_error() is per
 *    thread. pid_close() must not race with another call on the same handle.
 *  - Memory: the caller owns every buffer it passes; the library never keeps a pointer past the call. A handle
 *    owns the loaded graphs until pid_close().
 */
#ifndef PID_SDK_H
#define PID_SDK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PID_ABI_VERSION 3

#if defined(PID_SDK_BUILD)
#define PID_API __attribute__((visibility("default")))
#else
#define PID_API
#endif

typedef enum pid_status {
  PID_OK = 0,
  PID_ERROR_INPUT = 1,      /* a latent, shape, argument or buffer the decoder cannot take */
  PID_ERROR_CHECKPOINT = 2, /* an engine folder that is missing, damaged, tampered with or escapes its folder */
  PID_ERROR_CONFIG = 3,     /* no graph of the folder runs here (device, torch version, size) */
  PID_ERROR_NUMERICS = 4,   /* the decode produced NaN or Inf */
  PID_ERROR_INTERNAL = 5    /* anything else (a libtorch failure); the message says what */
} pid_status;

typedef struct pid_decoder pid_decoder;

/* The ABI version this library implements (PID_ABI_VERSION when header and library agree). */
PID_API int pid_abi_version(void);

/* Open an engine folder exported with `pid-sdk export FOLDER --format aoti`. device: "cpu", "cuda" or "cuda:N"
 * (NULL: "cpu"). Reads and checks the manifest; each graph set is hashed against it when first used. */
PID_API int pid_open(const char *folder, const char *device, pid_decoder **out);

/* The output image size of a latent of this shape {B, C, h, w}: out_hw = {H, W}. */
PID_API int pid_output_size(const pid_decoder *decoder, const int64_t shape[4], int64_t out_hw[2]);

/* Decode a float32 latent of shape {B, C, h, w} (contiguous, as the LDM produced it: normalised) into B RGB images
 * of H x W, written to out_rgb8 as uint8 [B, H, W, 3] (out_size bytes available, at least B*H*W*3).
 * latent_space: the LDM's latent space ("flux1", "sd3", ...; NULL: the model's own). latent_sigma: the noise level
 * of a partially denoised capture, 0 for a finished latent. seed: >= 0; the same seed gives the same noise as the
 * Python decoder's seed= on the CPU. No caption: the zero text embedding. 4 student steps, sde sampler. */
PID_API int pid_decode(pid_decoder *decoder, const float *latent, const int64_t shape[4], const char *latent_space,
               float latent_sigma, int64_t seed, uint8_t *out_rgb8, size_t out_size);

/* Windowed decoding (docs/guide.md, "Large images"): a latent of any size {B, C, h, w} decoded as overlapping windows
 * of window_hw = {height, width} output pixels, each an entry of the folder ({0, 0}: the largest entry that fits
 * inside the output), neighbours sharing `overlap` pixels (-1: a quarter of the window's shorter side), blended
 * linearly at every step; the noise is drawn for the whole image from `seed`. Equal to the Python decoder's
 * decode(window=..., overlap=...) on the CPU. pid_windowed_output_size gives {H, W}: h and w times the latent cell. */
PID_API int pid_windowed_output_size(const pid_decoder *decoder, const int64_t shape[4], int64_t out_hw[2]);
PID_API int pid_decode_windowed(pid_decoder *decoder, const float *latent, const int64_t shape[4],
                                const char *latent_space, float latent_sigma, int64_t seed, const int64_t window_hw[2],
                                int64_t overlap, uint8_t *out_rgb8, size_t out_size);

/* pid_decode_windowed with the ramp across overlaps named: "linear" (NULL: the default), "cosine" (flat at both
 * ends) or "flat" (the windows' plain mean); Python's decode(..., blend=). Since ABI version 3. */
PID_API int pid_decode_windowed_blend(pid_decoder *decoder, const float *latent, const int64_t shape[4],
                                      const char *latent_space, float latent_sigma, int64_t seed,
                                      const int64_t window_hw[2], int64_t overlap, const char *blend,
                                      uint8_t *out_rgb8, size_t out_size);

/* Release a handle and its graphs. NULL is allowed; a handle already closed (or never opened) is left alone and
 * sets pid_last_error(). Any call on a closed handle returns PID_ERROR_INPUT. */
PID_API void pid_close(pid_decoder *decoder);

/* The message of this thread's last error ("" when the last call succeeded). Valid until this thread's next call. */
PID_API const char *pid_last_error(void);

/* Read a latent from a safetensors file (the one tensor it holds, or the one named "latent"): call first with
 * data = NULL to get its shape (rank 3 [C, h, w] is returned as {1, C, h, w}), then with a buffer of
 * shape[0]*shape[1]*shape[2]*shape[3] floats (count). float32, float16 and bfloat16 files are read. */
PID_API int pid_read_latent(const char *path, float *data, size_t count, int64_t shape[4]);

#ifdef __cplusplus
}
#endif

#endif /* PID_SDK_H */
