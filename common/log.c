#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static ap_log_level g_level = AP_LOG_INFO;
static int g_json = 0;
static char g_component[64] = "agentprune";
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int ap_log_level_parse(const char *s) {
  for (int i = 0; i < 4; i++)
    if (s && strcasecmp(s, level_names[i]) == 0) return i;
  if (s && strcasecmp(s, "warning") == 0) return AP_LOG_WARN;
  return -1;
}

void ap_log_init(const char *component, ap_log_level level, int json) {
  pthread_mutex_lock(&g_lock);
  if (component) snprintf(g_component, sizeof g_component, "%s", component);
  g_level = level;
  g_json = json;
  pthread_mutex_unlock(&g_lock);
}

/* JSON string escaping for the message field; control bytes become \u00XX. */
static void json_escape(FILE *f, const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c == '\n') fputs("\\n", f);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
}

void ap_log(ap_log_level level, const char *fmt, ...) {
  if (level < g_level) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[40];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);

  pthread_mutex_lock(&g_lock);
  if (g_json) {
    fprintf(stderr, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"component\":\"%s\",\"msg\":\"", when,
            ts.tv_nsec / 1000000, level_names[level], g_component);
    json_escape(stderr, msg);
    fputs("\"}\n", stderr);
  } else {
    fprintf(stderr, "%s.%03ldZ %-5s %s: %s\n", when, ts.tv_nsec / 1000000, level_names[level],
            g_component, msg);
  }
  fflush(stderr);
  pthread_mutex_unlock(&g_lock);
}
