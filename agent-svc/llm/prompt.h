/*
 * prompt.h - the prompts of the `llm` policy (DESIGN.md section 5), built as
 * pure functions of the decision context: the same context gives the same
 * bytes, which tests pin down with golden files.
 *
 * System prompt: the task, the meaning of each profile column, the
 * constraints with their values, and the JSON answer format.
 * User prompt: the job state, the profile table (one line per layer, short
 * ids, about 15 tokens a line), the reflection history (the last
 * AP_LLM_HISTORY_RECENT entries verbatim, older ones in a digest of bounded
 * size) and, when the previous answer was rejected, the reason.
 *
 * Text that came from a foundation model earlier (rationales in the history)
 * is sanitised, truncated and quoted as data; it never changes a constraint.
 */
#ifndef AP_LLM_PROMPT_H
#define AP_LLM_PROMPT_H

#include "policy.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AP_LLM_HISTORY_RECENT 5        /* history entries quoted verbatim */
#define AP_LLM_HISTORY_LAYERS 12       /* layers listed per quoted entry */
#define AP_LLM_HISTORY_LAYERS_RB 64    /* ... per rolled-back entry: the layers to hold matter */
#define AP_LLM_RATIONALE_QUOTE 300     /* bytes of an earlier rationale quoted */
#define AP_LLM_DPPL_SHOWN 3            /* newest dppl values per table row */

/*
 * The system prompt for ctx (constraints from ctx->session; the defaults of
 * ap_limits_from when absent). Returns a malloc'd string the caller frees,
 * or NULL when out of memory.
 */
char *ap_llm_build_system_prompt(const ap_decide_ctx *ctx);

/*
 * The user prompt for ctx. `retry_error` (NULL for a first ask) is the
 * reason the previous answer was rejected; it is quoted at the end.
 * Returns a malloc'd string the caller frees, or NULL when out of memory.
 */
char *ap_llm_build_user_prompt(const ap_decide_ctx *ctx, const char *retry_error);

/*
 * The JSON schema of a valid answer, as a `response_format` value for
 * /v1/chat/completions ({"type":"json_schema","json_schema":{...}}). Layer
 * names are restricted to the table's ids when there are at most 500 rows
 * (OpenAI's limit on enum sizes). Returns a malloc'd JSON text, or NULL when
 * out of memory.
 */
char *ap_llm_build_response_format(const ap_decide_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif
