/*
 * parse.h - from a chat-completions HTTP response to a Decision, trusting
 * nothing in it: the envelope ({"choices":[{"message":{"content":...}}],
 * "usage":{...}}) and the model's answer inside it
 * ({"layers":[{"name":..., "target_sparsity":...}], "rationale":"..."}).
 *
 * Both parsers reject JSON nested deeper than AP_LLM_MAX_DEPTH before cJSON
 * sees it (cJSON recurses), wrong types and non-finite numbers. Error texts
 * are short, sanitised, and meant to be shown to the model when it is asked
 * again.
 */
#ifndef AP_LLM_PARSE_H
#define AP_LLM_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "policy.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AP_LLM_MAX_DEPTH 32            /* deepest JSON nesting accepted */
#define AP_LLM_RATIONALE_MAX 2000      /* bytes of rationale kept (with its NUL) */
#define AP_LLM_SNAP 1e-3               /* rounding slack snapped onto a bound */

/*
 * Deepest nesting of arrays and objects in the JSON text s[0..len), strings
 * skipped; stops counting past `limit` and returns limit + 1 then.
 */
int ap_llm_json_depth(const char *s, size_t len, int limit);

/*
 * Reads an OpenAI-style chat-completions response body. On success returns
 * 0, sets *content to a malloc'd copy of choices[0].message.content (the
 * caller frees it; "" when the content is null or empty) and the token
 * counts from "usage" (0 when absent). Returns -1 with err on a body that is
 * not such a response (an "error" object's message is quoted, sanitised).
 */
int ap_llm_parse_envelope(const char *body, size_t len, char **content, uint64_t *prompt_tokens,
                          uint64_t *completion_tokens, char *err, size_t errlen);

/*
 * Parses the model's answer `content` into `out` (initialised by the caller
 * with agentprune__v1__decision__init; on success it holds malloc'd layers
 * with full layer names and a sanitised rationale, to be released with
 * ap_decision_clear). Tolerates markdown code fences, a leading
 * <think>...</think> block and prose around one JSON object. Layer names
 * may be the table's ids or full names. Targets within AP_LLM_SNAP of a
 * bound (rho, or min(rho + step_cap, ceiling)) are snapped onto it, since
 * the prompt shows rounded values; entries that leave a layer where it is
 * are dropped. The constraints themselves are ap_decision_validate's job.
 * Returns 0, or -1 with err (out is left cleared).
 */
int ap_llm_parse_answer(const ap_decide_ctx *ctx, const char *content, size_t len, Agentprune__V1__Decision *out,
                        char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
