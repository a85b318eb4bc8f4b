#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "watch.h"

const char *cli_job_status_name(int s) {
  static const char *const names[] = {"unspecified", "queued", "running", "succeeded", "failed", "cancelled"};
  return s >= 0 && s <= 5 ? names[s] : "unknown";
}

static const char *event_name(int t) {
  static const char *const names[] = {"?",         "queued",    "started",  "baseline", "iteration",
                                      "profiled",  "decision",  "applied",  "evaluated", "accepted",
                                      "rolled-back", "agent-wait", "exported", "finished", "failed",
                                      "cancelled", "resumed"};
  return t >= 0 && t <= 16 ? names[t] : "?";
}

static void fmt_eta(double s, char *buf, size_t len) {
  if (s <= 0) snprintf(buf, len, "--");
  else if (s < 60) snprintf(buf, len, "%.0fs", s);
  else if (s < 3600) snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
  else snprintf(buf, len, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

void cli_format_event(const Agentprune__V1__JobEvent *e, char *buf, size_t len) {
  char eta[32];
  fmt_eta(e->eta_s, eta, sizeof eta);
  int n = snprintf(buf, len, "[%s] iter %u  sparsity %.4f  ppl %.4f  accepted %.4f  rollbacks %u  eta %s",
                   event_name(e->type), e->iteration, e->global_sparsity, e->ppl, e->accepted_ppl,
                   e->rollbacks, eta);
  if (e->message && *e->message && n > 0 && (size_t)n < len)
    snprintf(buf + n, len - (size_t)n, "  %s", e->message);
}

static int is_final(int status) {
  return status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_SUCCEEDED ||
         status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_FAILED ||
         status == AGENTPRUNE__V1__JOB_STATUS__JOB_STATUS_CANCELLED;
}

int cli_watch_job(ap_rpc_client *c, const char *job_id, int *final_status, ap_rpc_status *st) {
  Agentprune__V1__WatchJobRequest req = AGENTPRUNE__V1__WATCH_JOB_REQUEST__INIT;
  req.job_id = (char *)job_id;
  int tty = isatty(STDERR_FILENO);
  *final_status = 0;
  ap_rpc_stream *s = ap_rpc_stream_open(c, "/agentprune.v1.Pruner/WatchJob", &req.base,
                                        &agentprune__v1__job_event__descriptor, 0, st);
  if (!s) return st->code ? st->code : 13;
  int live = 0;
  for (;;) {
    ProtobufCMessage *m = NULL;
    int r = ap_rpc_stream_next(s, &m, st);
    if (r <= 0) break;
    Agentprune__V1__JobEvent *e = (Agentprune__V1__JobEvent *)m;
    char line[1024];
    cli_format_event(e, line, sizeof line);
    if (tty) {
      fprintf(stderr, "\r\033[K%.*s", 200, line);
      live = 1;
      /* Keep the outcome of each iteration on screen; overwrite the rest. */
      if (e->type == AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ACCEPTED ||
          e->type == AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_ROLLED_BACK ||
          e->type == AGENTPRUNE__V1__JOB_EVENT_TYPE__JOB_EVENT_BASELINE || is_final(e->status)) {
        fputc('\n', stderr);
        live = 0;
      }
    } else {
      fprintf(stderr, "%s\n", line);
    }
    fflush(stderr);
    if (e->status) *final_status = e->status;
    int done = is_final(e->status);
    protobuf_c_message_free_unpacked(m, NULL);
    if (done) {
      ap_rpc_stream_cancel(s);
      st->code = 0;
      break;
    }
  }
  if (live) fputc('\n', stderr);
  ap_rpc_stream_free(s);
  return is_final(*final_status) ? 0 : st->code;
}
