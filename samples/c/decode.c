/* Decode a latent file into a PNG with the C ABI of pid-sdk.
 *
 *   decode FOLDER LATENT.safetensors OUT.png [--seed N] [--device cpu|cuda] [--latent-space NAME] [--sigma S]
 *
 * FOLDER is an engine folder with AOTInductor packages (pid-sdk export FOLDER --format aoti). A batch of B latents
 * writes OUT.png for the first image and OUT-1.png ... for the others. Exit status 0 on success, 1 with the
 * library's message on stderr otherwise. */
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pid_sdk.h"

static int fail(const char *context) {
  fprintf(stderr, "error: %s\n%s\n", context, pid_last_error());
  return 1;
}

/* Write to a temporary file beside the target, then rename: never a half-written PNG. */
static int write_png(const char *path, const uint8_t *rgb, int64_t height, int64_t width) {
  size_t length = strlen(path) + 16;
  char *tmp = malloc(length);
  snprintf(tmp, length, "%s.tmp%d", path, (int)getpid());
  FILE *file = fopen(tmp, "wb");
  png_structp png = file ? png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL) : NULL;
  png_infop info = png ? png_create_info_struct(png) : NULL;
  volatile int ok = 0; /* volatile: libpng reports errors by longjmp back to the setjmp below */
  if (info != NULL && setjmp(png_jmpbuf(png)) == 0) {
    png_init_io(png, file);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int64_t y = 0; y < height; ++y) png_write_row(png, (png_const_bytep)(rgb + y * width * 3));
    png_write_end(png, NULL);
    ok = 1;
  }
  if (png) png_destroy_write_struct(&png, info ? &info : NULL);
  ok = file != NULL && fclose(file) == 0 && ok && rename(tmp, path) == 0;
  if (!ok) {
    fprintf(stderr, "error: cannot write %s\n  fix: check the folder exists and is writable\n", path);
    remove(tmp);
  }
  free(tmp);
  return ok ? 0 : 1;
}

static char *numbered(const char *path, int64_t index) { /* out.png -> out-1.png */
  size_t length = strlen(path) + 32;
  char *name = malloc(length);
  const char *dot = strrchr(path, '.');
  int stem = dot ? (int)(dot - path) : (int)strlen(path);
  snprintf(name, length, "%.*s-%lld%s", stem, path, (long long)index, dot ? dot : "");
  return name;
}

/* Whether two paths name one file (through links and different spellings); a path that does not exist yet is
 * no file. */
static int same_file(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s FOLDER LATENT.safetensors OUT.png [--seed N] [--device cpu|cuda] "
                    "[--latent-space NAME] [--sigma S] [--window HxW|auto] [--overlap N] "
                    "[--blend linear|cosine|flat]\n", argv[0]);
    return 2;
  }
  const char *folder = argv[1], *latent_path = argv[2], *out_path = argv[3];
  const char *device = "cpu", *latent_space = NULL, *blend = NULL;
  long long seed = 0, overlap = -1;
  float sigma = 0.0f;
  int64_t window[2] = {-1, -1};  /* -1: the whole image; {0, 0}: auto */
  for (int i = 4; i < argc; i += 2) {
    char *end = NULL;
    const char *value = i + 1 < argc ? argv[i + 1] : NULL;
    if (value && !strcmp(argv[i], "--seed")) seed = strtoll(value, &end, 10);
    else if (value && !strcmp(argv[i], "--sigma")) sigma = strtof(value, &end);
    else if (value && !strcmp(argv[i], "--device")) device = value;
    else if (value && !strcmp(argv[i], "--latent-space")) latent_space = value;
    else if (value && !strcmp(argv[i], "--overlap")) overlap = strtoll(value, &end, 10);
    else if (value && !strcmp(argv[i], "--blend")) blend = value;
    else if (value && !strcmp(argv[i], "--window")) {
      long long h = 0, w = 0;
      char tail = 0;
      if (!strcmp(value, "auto")) window[0] = window[1] = 0;
      else if (sscanf(value, "%lldx%lld%c", &h, &w, &tail) == 2 && h > 0 && w > 0) window[0] = h, window[1] = w;
      else {
        fprintf(stderr, "error: --window takes HxW or auto, received '%s'\n  fix: pass e.g. --window 512x512\n",
                value);
        return 2;
      }
    }
    else {
      fprintf(stderr, "error: unknown option or missing value: %s\n  fix: see the usage line (run without "
                      "arguments)\n", argv[i]);
      return 2;
    }
    if (end != NULL && (*end != '\0' || end == value)) {
      fprintf(stderr, "error: %s takes a number, received '%s'\n  fix: pass e.g. %s 0\n", argv[i], value, argv[i]);
      return 2;
    }
  }

  if (same_file(latent_path, out_path)) {  /* the PNG would replace the latent it is decoded from */
    fprintf(stderr, "error: the output %s is the latent file itself\n  fix: pass another output path\n", out_path);
    return 2;
  }

  int64_t shape[4], out_hw[2];
  if (pid_read_latent(latent_path, NULL, 0, shape) != PID_OK) return fail("reading the latent");
  size_t count = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
  float *latent = malloc(count * sizeof(float));
  if (pid_read_latent(latent_path, latent, count, shape) != PID_OK) return fail("reading the latent");

  pid_decoder *decoder = NULL;
  if (pid_open(folder, device, &decoder) != PID_OK) return fail("opening the engine folder");
  int windowed = window[0] >= 0;
  if ((windowed ? pid_windowed_output_size : pid_output_size)(decoder, shape, out_hw) != PID_OK)
    return fail("sizing the output");
  size_t image_bytes = (size_t)(out_hw[0] * out_hw[1] * 3);
  uint8_t *rgb = malloc(image_bytes * (size_t)shape[0]);
  size_t rgb_bytes = image_bytes * (size_t)shape[0];
  int status = windowed ? pid_decode_windowed_blend(decoder, latent, shape, latent_space, sigma, seed, window,
                                                    overlap, blend, rgb, rgb_bytes)
                        : pid_decode(decoder, latent, shape, latent_space, sigma, seed, rgb, rgb_bytes);
  pid_close(decoder);
  free(latent);
  if (status != PID_OK) {
    free(rgb);
    return fail("decoding");
  }
  int failed = 0;
  for (int64_t b = 0; b < shape[0] && !failed; ++b) {
    char *name = b == 0 ? NULL : numbered(out_path, b);
    failed = write_png(name ? name : out_path, rgb + b * image_bytes, out_hw[0], out_hw[1]);
    if (!failed) printf("%s: %lldx%lld\n", name ? name : out_path, (long long)out_hw[0], (long long)out_hw[1]);
    free(name);
  }
  free(rgb);
  return failed;
}
