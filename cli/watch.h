/*
 * watch.h - following a job's event stream and rendering progress: a live
 * progress line when stderr is a terminal, one plain line per event otherwise.
 */
#ifndef AP_CLI_WATCH_H
#define AP_CLI_WATCH_H

#include "agentprune/v1/pruner.pb-c.h"
#include "rpc_client.h"

/*
 * Streams the events of job_id to stderr until the job reaches a final state
 * (succeeded, failed, cancelled). Returns 0 then, or the stream's error code.
 * *final_status gets the job's last status seen in an event.
 */
int cli_watch_job(ap_rpc_client *c, const char *job_id, int *final_status, ap_rpc_status *st);

/* One line describing an event (no newline). */
void cli_format_event(const Agentprune__V1__JobEvent *e, char *buf, size_t len);

const char *cli_job_status_name(int s);

#endif
