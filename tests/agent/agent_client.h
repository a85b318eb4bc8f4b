/*
 * agent_client.h - thin typed wrappers over ap_rpc_unary for the Agent
 * service, used by the gRPC-level agent tests. Each returns the status code;
 * replies are freed by the caller with protobuf_c_message_free_unpacked.
 */
#ifndef AP_AGENT_CLIENT_H
#define AP_AGENT_CLIENT_H

#include "agent_fixtures.h"
#include "rpc_client.h"

#define AC_TIMEOUT_MS 60000

static inline int ac_open(ap_rpc_client *c, const char *job, const char *policy, double target,
                          Agentprune__V1__Session **out, ap_rpc_status *st) {
  Agentprune__V1__Constraints cons = AGENTPRUNE__V1__CONSTRAINTS__INIT;
  cons.target_sparsity = target;
  Agentprune__V1__SessionSpec spec = AGENTPRUNE__V1__SESSION_SPEC__INIT;
  spec.job_id = (char *)job;
  spec.policy = (char *)policy;
  spec.constraints = &cons;
  spec.model = "synthetic";
  *out = NULL;
  return ap_rpc_unary(c, "/agentprune.v1.Agent/OpenSession", &spec.base, &agentprune__v1__session__descriptor,
                      (ProtobufCMessage **)out, AC_TIMEOUT_MS, st);
}

static inline int ac_decide(ap_rpc_client *c, const Agentprune__V1__DecideRequest *req,
                            Agentprune__V1__Decision **out, ap_rpc_status *st) {
  *out = NULL;
  return ap_rpc_unary(c, "/agentprune.v1.Agent/Decide", &req->base, &agentprune__v1__decision__descriptor,
                      (ProtobufCMessage **)out, AC_TIMEOUT_MS, st);
}

static inline int ac_reflect(ap_rpc_client *c, const Agentprune__V1__Outcome *o, Agentprune__V1__Ack **out,
                             ap_rpc_status *st) {
  *out = NULL;
  return ap_rpc_unary(c, "/agentprune.v1.Agent/Reflect", &o->base, &agentprune__v1__ack__descriptor,
                      (ProtobufCMessage **)out, AC_TIMEOUT_MS, st);
}

static inline int ac_history(ap_rpc_client *c, const char *sid, Agentprune__V1__History **out, ap_rpc_status *st) {
  Agentprune__V1__GetHistoryRequest r = AGENTPRUNE__V1__GET_HISTORY_REQUEST__INIT;
  r.session_id = (char *)sid;
  *out = NULL;
  return ap_rpc_unary(c, "/agentprune.v1.Agent/GetHistory", &r.base, &agentprune__v1__history__descriptor,
                      (ProtobufCMessage **)out, AC_TIMEOUT_MS, st);
}

static inline int ac_close(ap_rpc_client *c, const char *sid, Agentprune__V1__Ack **out, ap_rpc_status *st) {
  Agentprune__V1__CloseSessionRequest r = AGENTPRUNE__V1__CLOSE_SESSION_REQUEST__INIT;
  r.session_id = (char *)sid;
  *out = NULL;
  return ap_rpc_unary(c, "/agentprune.v1.Agent/CloseSession", &r.base, &agentprune__v1__ack__descriptor,
                      (ProtobufCMessage **)out, AC_TIMEOUT_MS, st);
}

/* 1 when two messages pack to the same bytes. */
static inline int ac_same(const ProtobufCMessage *a, const ProtobufCMessage *b) {
  if (!a || !b) return 0;
  size_t na = protobuf_c_message_get_packed_size(a), nb = protobuf_c_message_get_packed_size(b);
  if (na != nb) return 0;
  uint8_t *x = malloc(na + 1), *y = malloc(nb + 1);
  protobuf_c_message_pack(a, x);
  protobuf_c_message_pack(b, y);
  int same = memcmp(x, y, na) == 0;
  free(x);
  free(y);
  return same;
}

/* Applies a decision to the table (rho = target for every listed layer). */
static inline void ac_apply(Agentprune__V1__ProfileTable *t, const Agentprune__V1__Decision *d) {
  for (size_t j = 0; j < d->n_layers; j++)
    for (size_t i = 0; i < t->n_layers; i++)
      if (strcmp(t->layers[i]->name, d->layers[j]->name) == 0) t->layers[i]->rho = d->layers[j]->target_sparsity;
}

#endif
