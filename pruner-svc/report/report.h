/*
 * report.h - report.html: a self-contained page (no scripts, no external
 * resources) with inline SVG plots, rendered from the job's agentprune.json
 * document (see docs/output-format.md for its keys):
 *   - summary (dense and pruned perplexity on eval and test text, sparsity,
 *     iterations, rollbacks, stop reason) and the baselines beside it;
 *   - a heat map of per-layer sparsity, blocks x kinds (q k v o gate up down);
 *   - perplexity per iteration, rollbacks marked;
 *   - the trajectory (each decision, its outcome, the agent's rationale);
 *   - the final sensitivity profile table.
 * Every string from the document is HTML-escaped: rationales come from a
 * foundation model and are untrusted.
 */
#ifndef AP_REPORT_H
#define AP_REPORT_H

#include <stddef.h>

#include <cjson/cJSON.h>

/*
 * Renders `doc` into a malloc'd NUL-terminated HTML string (*out, caller
 * frees). Missing keys are shown as absent, never fatal. Returns 0, or -1 on
 * allocation failure or a NULL/non-object doc (message in err).
 */
int ap_report_render(const cJSON *doc, char **out, char *err, size_t errlen);

/* ap_report_render, then writes `path` (via a temporary file and rename). */
int ap_report_write(const cJSON *doc, const char *path, char *err, size_t errlen);

#endif
