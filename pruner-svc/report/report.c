#include "report.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A growing string buffer; `failed` latches allocation failure so the
   rendering code can stay linear and check once at the end. */
typedef struct {
  char *p;
  size_t len, cap;
  int failed;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

#define SB_LIT(b, lit) sb_put((b), (lit), sizeof(lit) - 1)

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) {
    sb_put(b, tmp, (size_t)n);
    return;
  }
  char *big = malloc((size_t)n + 1);
  if (!big) {
    b->failed = 1;
    return;
  }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb_put(b, big, (size_t)n);
  free(big);
}

/* HTML-escapes at most `max` bytes of s; control characters are dropped. */
static void sb_esc(sbuf *b, const char *s, size_t max) {
  if (!s) return;
  for (size_t i = 0; s[i] && i < max; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '<': SB_LIT(b, "&lt;"); break;
    case '>': SB_LIT(b, "&gt;"); break;
    case '&': SB_LIT(b, "&amp;"); break;
    case '"': SB_LIT(b, "&quot;"); break;
    case '\'': SB_LIT(b, "&#39;"); break;
    default:
      if (c >= 0x20 || c == '\n' || c == '\t') sb_put(b, (const char *)&c, 1);
    }
  }
}

static double num(const cJSON *o, const char *key, double dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(v) && isfinite(v->valuedouble) ? v->valuedouble : dflt;
}

static const char *str(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : "";
}

static const char *const KINDS[7] = {"q", "k", "v", "o", "gate", "up", "down"};

static int kind_index(const char *k) {
  for (int i = 0; i < 7; i++)
    if (!strcmp(k, KINDS[i])) return i;
  return -1;
}

/* White (0) to deep blue (1): readable for both small and large sparsities. */
static void sparsity_color(double s, char *buf, size_t len) {
  if (s < 0) s = 0;
  if (s > 1) s = 1;
  int r = (int)(255 - s * (255 - 24));
  int g = (int)(255 - s * (255 - 64));
  int bl = (int)(255 - s * (255 - 140));
  snprintf(buf, len, "rgb(%d,%d,%d)", r, g, bl);
}

static void render_summary(sbuf *b, const cJSON *doc) {
  const cJSON *job = cJSON_GetObjectItemCaseSensitive(doc, "job");
  const cJSON *res = cJSON_GetObjectItemCaseSensitive(doc, "result");
  SB_LIT(b, "<h1>agentprune report</h1>\n<table class=\"kv\">\n");
  SB_LIT(b, "<tr><th>model</th><td>");
  sb_esc(b, str(job, "model_dir"), 4096);
  SB_LIT(b, "</td></tr>\n<tr><th>policy</th><td>");
  sb_esc(b, str(job, "policy"), 64);
  sb_printf(b, "</td></tr>\n<tr><th>structure</th><td>");
  sb_esc(b, str(job, "structure"), 64);
  sb_printf(b, "</td></tr>\n<tr><th>target sparsity</th><td>%.4f</td></tr>\n", num(job, "target_sparsity", NAN));
  sb_printf(b, "<tr><th>reached sparsity</th><td id=\"sparsity\">%.4f</td></tr>\n", num(res, "sparsity", NAN));
  sb_printf(b, "<tr><th>eval ppl (dense &rarr; pruned)</th><td>%.4f &rarr; %.4f</td></tr>\n",
            num(res, "dense_ppl", NAN), num(res, "ppl", NAN));
  if (cJSON_GetObjectItemCaseSensitive(res, "test_ppl"))
    sb_printf(b, "<tr><th>test ppl (dense &rarr; pruned)</th><td>%.4f &rarr; %.4f</td></tr>\n",
              num(res, "dense_test_ppl", NAN), num(res, "test_ppl", NAN));
  sb_printf(b, "<tr><th>iterations / rollbacks</th><td>%.0f / %.0f</td></tr>\n", num(res, "iterations", 0),
            num(res, "rollbacks", 0));
  SB_LIT(b, "<tr><th>stop reason</th><td>");
  sb_esc(b, str(res, "stop_reason"), 64);
  sb_printf(b, "</td></tr>\n<tr><th>wall time</th><td>%.1f s</td></tr>\n</table>\n", num(res, "wall_s", 0));
}

static void render_baselines(sbuf *b, const cJSON *doc) {
  const cJSON *bl = cJSON_GetObjectItemCaseSensitive(doc, "baselines");
  if (!cJSON_IsArray(bl) || cJSON_GetArraySize(bl) == 0) return;
  const cJSON *res = cJSON_GetObjectItemCaseSensitive(doc, "result");
  const cJSON *job = cJSON_GetObjectItemCaseSensitive(doc, "job");
  sb_printf(b, "<h2>Against the baselines (same engine, same protocol)</h2>\n<table id=\"baselines\">\n"
               "<tr><th>method</th><th>sparsity</th><th>eval ppl</th><th>test ppl</th></tr>\n");
  sb_printf(b, "<tr class=\"ours\"><td>");
  sb_esc(b, str(job, "policy"), 64);
  sb_printf(b, " (this job)</td><td>%.4f</td><td>%.4f</td><td>%.4f</td></tr>\n", num(res, "sparsity", NAN),
            num(res, "ppl", NAN), num(res, "test_ppl", NAN));
  const cJSON *e;
  cJSON_ArrayForEach(e, bl) {
    SB_LIT(b, "<tr><td>");
    sb_esc(b, str(e, "policy"), 64);
    sb_printf(b, "</td><td>%.4f</td><td>%.4f</td><td>%.4f</td></tr>\n", num(e, "sparsity", NAN),
              num(e, "ppl", NAN), num(e, "test_ppl", NAN));
  }
  SB_LIT(b, "</table>\n");
}

static void render_heatmap(sbuf *b, const cJSON *doc) {
  const cJSON *layers = cJSON_GetObjectItemCaseSensitive(doc, "layers");
  if (!cJSON_IsArray(layers)) return;
  int nblocks = 0;
  const cJSON *l;
  cJSON_ArrayForEach(l, layers) {
    int blk = (int)num(l, "block", -1);
    if (blk + 1 > nblocks) nblocks = blk + 1;
  }
  if (nblocks <= 0 || nblocks > 4096) return;
  double *cell = malloc(sizeof(double) * (size_t)nblocks * 7);
  if (!cell) {
    b->failed = 1;
    return;
  }
  for (int i = 0; i < nblocks * 7; i++) cell[i] = -1;
  cJSON_ArrayForEach(l, layers) {
    int blk = (int)num(l, "block", -1), k = kind_index(str(l, "kind"));
    if (blk >= 0 && k >= 0) cell[blk * 7 + k] = num(l, "sparsity", -1);
  }
  const int cw = 64, ch = nblocks > 40 ? 12 : 22, left = 60, top = 24;
  int w = left + 7 * cw + 10, h = top + nblocks * ch + 10;
  sb_printf(b, "<h2>Per-layer sparsity</h2>\n<svg id=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\" "
               "width=\"%d\" height=\"%d\" role=\"img\" aria-label=\"sparsity heat map\">\n", w, h);
  for (int k = 0; k < 7; k++)
    sb_printf(b, "<text x=\"%d\" y=\"16\" text-anchor=\"middle\" class=\"ax\">%s</text>\n",
              left + k * cw + cw / 2, KINDS[k]);
  for (int blk = 0; blk < nblocks; blk++) {
    sb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"ax\">block %d</text>\n", left - 6,
              top + blk * ch + ch - 6, blk);
    for (int k = 0; k < 7; k++) {
      double s = cell[blk * 7 + k];
      char color[32];
      if (s < 0) snprintf(color, sizeof color, "#eee");
      else sparsity_color(s, color, sizeof color);
      sb_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"#fff\">"
                   "<title>block %d %s: %.4f</title></rect>\n",
                left + k * cw, top + blk * ch, cw, ch, color, blk, KINDS[k], s);
      if (s >= 0 && ch >= 16)
        sb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" class=\"%s\">%.2f</text>\n",
                  left + k * cw + cw / 2, top + blk * ch + ch - 7, s > 0.55 ? "cl" : "cd", s);
    }
  }
  SB_LIT(b, "</svg>\n");
  free(cell);
}

static void render_ppl_plot(sbuf *b, const cJSON *doc) {
  const cJSON *traj = cJSON_GetObjectItemCaseSensitive(doc, "trajectory");
  int n = cJSON_IsArray(traj) ? cJSON_GetArraySize(traj) : 0;
  if (n == 0) return;
  const cJSON *res = cJSON_GetObjectItemCaseSensitive(doc, "result");
  double lo = num(res, "dense_ppl", INFINITY), hi = -INFINITY;
  const cJSON *e;
  cJSON_ArrayForEach(e, traj) {
    double p = num(e, "ppl", NAN);
    if (isfinite(p)) {
      if (p < lo) lo = p;
      if (p > hi) hi = p;
    }
  }
  if (!isfinite(lo) || !isfinite(hi)) return;
  if (hi <= lo) hi = lo + 1;
  /* Log scale: a rolled-back attempt can be orders of magnitude worse. */
  double llo = log(lo), lhi = log(hi);
  const int W = 640, H = 280, L = 60, R = 20, T = 20, B = 40;
  sb_printf(b, "<h2>Perplexity per iteration</h2>\n<svg id=\"ppl\" xmlns=\"http://www.w3.org/2000/svg\" "
               "width=\"%d\" height=\"%d\" role=\"img\" aria-label=\"perplexity per iteration\">\n", W, H);
  sb_printf(b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" class=\"axis\"/>\n", L, H - B, W - R, H - B);
  sb_printf(b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" class=\"axis\"/>\n", L, T, L, H - B);
  for (int t = 0; t <= 4; t++) {
    double v = exp(llo + (lhi - llo) * t / 4.0);
    int y = (int)(H - B - (H - B - T) * t / 4.0);
    sb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"ax\">%.3g</text>\n", L - 4, y + 4, v);
  }
  sb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" class=\"ax\">iteration</text>\n", (L + W - R) / 2,
            H - 8);
  double xs = n > 1 ? (double)(W - L - R) / (n - 1) : 0;
  /* Accepted ppl: the line the job actually followed. */
  SB_LIT(b, "<polyline class=\"accepted\" points=\"");
  int i = 0;
  cJSON_ArrayForEach(e, traj) {
    double p = num(e, "accepted_ppl", NAN);
    if (isfinite(p) && p > 0)
      sb_printf(b, "%.1f,%.1f ", L + i * xs, H - B - (H - B - T) * (log(p) - llo) / (lhi - llo));
    i++;
  }
  SB_LIT(b, "\"/>\n");
  i = 0;
  cJSON_ArrayForEach(e, traj) {
    double p = num(e, "ppl", NAN);
    const cJSON *acc = cJSON_GetObjectItemCaseSensitive(e, "accepted");
    if (isfinite(p) && p > 0) {
      double x = L + i * xs, y = H - B - (H - B - T) * (log(p) - llo) / (lhi - llo);
      if (cJSON_IsTrue(acc))
        sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" class=\"ok\"><title>iteration %.0f: %.4f accepted</title></circle>\n",
                  x, y, num(e, "iteration", 0), p);
      else
        sb_printf(b, "<path d=\"M%.1f %.1fl8 8m0 -8l-8 8\" class=\"rb\"><title>iteration %.0f: %.4f rolled back</title></path>\n",
                  x - 4, y - 4, num(e, "iteration", 0), p);
    }
    i++;
  }
  SB_LIT(b, "</svg>\n<p class=\"legend\"><span class=\"ok\">&#9679;</span> accepted "
            "<span class=\"rb\">&#10005;</span> rolled back; the line is the accepted perplexity (log scale).</p>\n");
}

static void render_trajectory(sbuf *b, const cJSON *doc) {
  const cJSON *traj = cJSON_GetObjectItemCaseSensitive(doc, "trajectory");
  if (!cJSON_IsArray(traj) || cJSON_GetArraySize(traj) == 0) return;
  sb_printf(b, "<h2>Trajectory</h2>\n<table id=\"trajectory\">\n<tr><th>iteration</th><th>policy</th><th>layers</th>"
               "<th>sparsity</th><th>ppl</th><th>outcome</th><th>rationale</th></tr>\n");
  const cJSON *e;
  cJSON_ArrayForEach(e, traj) {
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(e, "decision");
    int acc = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "accepted"));
    sb_printf(b, "<tr class=\"%s\"><td>%.0f</td><td>", acc ? "acc" : "rb", num(e, "iteration", 0));
    sb_esc(b, str(e, "policy"), 64);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "fallback"))) SB_LIT(b, " (fallback)");
    const cJSON *probes = cJSON_GetObjectItemCaseSensitive(e, "probes");
    int probing = cJSON_IsArray(probes) && cJSON_GetArraySize(probes) > 0;
    sb_printf(b, "</td><td>%d</td><td>%.4f</td><td>%.4f</td><td>%s</td><td>",
              cJSON_IsArray(dec) ? cJSON_GetArraySize(dec) : 0, num(e, "global_sparsity", NAN), num(e, "ppl", NAN),
              probing ? "measured plans" : acc ? "accepted" : "rolled back");
    sb_esc(b, str(e, "rationale"), 600);
    if (probing) {
      /* The plans' rollout ppl: why the block got the allocation it got. */
      SB_LIT(b, "<br>");
      const cJSON *p;
      cJSON_ArrayForEach(p, probes) {
        SB_LIT(b, " ");
        sb_esc(b, str(p, "label"), 64);
        sb_printf(b, " %.4f;", num(p, "ppl", NAN));
      }
    }
    SB_LIT(b, "</td></tr>\n");
  }
  SB_LIT(b, "</table>\n");
}

static void render_profile(sbuf *b, const cJSON *doc) {
  const cJSON *prof = cJSON_GetObjectItemCaseSensitive(doc, "profile");
  if (!cJSON_IsArray(prof) || cJSON_GetArraySize(prof) == 0) return;
  sb_printf(b, "<h2>Final sensitivity profile</h2>\n<table id=\"profile\">\n<tr><th>layer</th><th>kind</th>"
               "<th>block</th><th>params</th><th>s</th><th>g</th><th>z_s</th><th>z_g</th><th>rho</th></tr>\n");
  const cJSON *e;
  cJSON_ArrayForEach(e, prof) {
    SB_LIT(b, "<tr><td>");
    sb_esc(b, str(e, "name"), 256);
    SB_LIT(b, "</td><td>");
    sb_esc(b, str(e, "kind"), 16);
    sb_printf(b, "</td><td>%.0f</td><td>%.0f</td><td>%.4g</td><td>%.4g</td><td>%.3f</td><td>%.3f</td><td>%.4f</td></tr>\n",
              num(e, "block", 0), num(e, "params", 0), num(e, "s", NAN), num(e, "g", NAN), num(e, "z_s", NAN),
              num(e, "z_g", NAN), num(e, "rho", NAN));
  }
  SB_LIT(b, "</table>\n");
}

static const char STYLE[] =
    "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
    "th{background:#f4f4f4}tr.rb td{color:#a33}tr.ours td{font-weight:bold}.kv th{width:16em}"
    ".ax{font-size:11px;fill:#444}.cl{font-size:10px;fill:#fff}.cd{font-size:10px;fill:#222}"
    ".axis{stroke:#888}.accepted{fill:none;stroke:#2a6;stroke-width:2}circle.ok{fill:#2a6}path.rb{stroke:#c33;stroke-width:2}"
    "span.ok{color:#2a6}span.rb{color:#c33}.legend{font-size:12px}</style>\n";

int ap_report_render(const cJSON *doc, char **out, char *err, size_t errlen) {
  *out = NULL;
  if (!cJSON_IsObject(doc)) {
    snprintf(err, errlen, "report: the document is not a JSON object");
    return -1;
  }
  sbuf b = {0};
  sb_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<title>agentprune report</title>\n%s</head><body>\n", STYLE);
  render_summary(&b, doc);
  render_baselines(&b, doc);
  render_heatmap(&b, doc);
  render_ppl_plot(&b, doc);
  render_trajectory(&b, doc);
  render_profile(&b, doc);
  sb_printf(&b, "<p class=\"legend\">Generated by agentprune %s.</p>\n</body></html>\n",
            str(doc, "agentprune_version"));
  if (b.failed) {
    free(b.p);
    snprintf(err, errlen, "report: out of memory");
    return -1;
  }
  *out = b.p;
  return 0;
}

int ap_report_write(const cJSON *doc, const char *path, char *err, size_t errlen) {
  char *html = NULL;
  if (ap_report_render(doc, &html, err, errlen) < 0) return -1;
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    snprintf(err, errlen, "report: cannot write %s: %s", tmp, strerror(errno));
    free(html);
    return -1;
  }
  size_t n = strlen(html);
  int ok = fwrite(html, 1, n, f) == n;
  ok &= fclose(f) == 0;
  free(html);
  if (!ok || rename(tmp, path) != 0) {
    snprintf(err, errlen, "report: cannot write %s: %s", path, strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}
