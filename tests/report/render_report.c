/* render_report: agentprune.json -> report.html (used by the report tests). */
#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "report.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: render_report agentprune.json report.html\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "rb");
  if (!f) {
    perror(argv[1]);
    return 2;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
    fclose(f);
    free(buf);
    return 2;
  }
  fclose(f);
  buf[n] = 0;
  cJSON *doc = cJSON_Parse(buf);
  free(buf);
  char err[256];
  int rc = ap_report_write(doc, argv[2], err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  cJSON_Delete(doc);
  return rc ? 1 : 0;
}
