/*
 * log.h - leveled logging to stderr, as text or as one JSON object per line
 * (for log collectors on Kubernetes). Thread-safe.
 */
#ifndef AP_LOG_H
#define AP_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { AP_LOG_DEBUG = 0, AP_LOG_INFO = 1, AP_LOG_WARN = 2, AP_LOG_ERROR = 3 } ap_log_level;

/* Parses "debug|info|warn|error"; returns -1 when unknown. */
int ap_log_level_parse(const char *s);

/* Configures the process-wide logger. `component` names the service in each line. */
void ap_log_init(const char *component, ap_log_level level, int json);

void ap_log(ap_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define AP_DEBUG(...) ap_log(AP_LOG_DEBUG, __VA_ARGS__)
#define AP_INFO(...) ap_log(AP_LOG_INFO, __VA_ARGS__)
#define AP_WARN(...) ap_log(AP_LOG_WARN, __VA_ARGS__)
#define AP_ERROR(...) ap_log(AP_LOG_ERROR, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
