/*
 * perplexity.h - perplexity of a model over a text, exactly as DESIGN.md
 * section 2 says: the whole text tokenized once (BOS only where the tokenizer
 * adds one, at the start), non-overlapping windows of L tokens, the tail
 * dropped, ppl = exp(mean NLL over every predicted token of every window),
 * each window predicting its tokens 1..L-1 from the tokens before them.
 * This is the protocol of the Wanda/SparseGPT eval (HF-style windows, every
 * position after the first scored).
 */
#ifndef AP_PERPLEXITY_H
#define AP_PERPLEXITY_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "textdata.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ap_ppl_opts {
  int ctx;               /* window length L; 0 = min(2048, max_position_embeddings) */
  int64_t max_windows;   /* <= 0: every window of the text */
  ap_sample_mode sample; /* AP_SAMPLE_FIRST (default) or AP_SAMPLE_RANDOM */
  uint64_t seed;         /* for AP_SAMPLE_RANDOM (textdata.h documents the generator) */
} ap_ppl_opts;

typedef struct ap_ppl_result {
  double ppl;          /* exp(nll) */
  double nll;          /* mean NLL per predicted token (nats) */
  double nll_sum;      /* sum of the NLL of every predicted token */
  int64_t tokens;      /* predicted tokens: windows * (ctx - 1) */
  int64_t windows;
  int ctx;
  double seconds;      /* wall time of the forward passes */
  double tokens_per_s; /* windows * ctx / seconds (tokens pushed through the model) */
} ap_ppl_result;

/* Perplexity over windows of an already tokenized text. opts may be NULL
 * (defaults). Errors: AP_MODEL_EARG for a bad ctx / too short a text /
 * random sample larger than the text (message in err), or the model's error
 * codes (model.h) with ap_model_error's message. */
int ap_perplexity(ap_model *m, const ap_textdata *td, const ap_ppl_opts *opts, ap_ppl_result *out, char *err,
                  size_t errlen);

/* Same over a text file, tokenized whole with tok. Errors as above, plus
 * AP_MODEL_ELOAD when the file cannot be read or tokenized. */
int ap_perplexity_file(ap_model *m, const ap_tokenizer *tok, const char *path, const ap_ppl_opts *opts,
                       ap_ppl_result *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
