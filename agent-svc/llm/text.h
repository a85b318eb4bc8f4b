/*
 * text.h - making untrusted text (foundation-model answers, rationales read
 * back from history) safe to store, log and quote in a later prompt.
 */
#ifndef AP_LLM_TEXT_H
#define AP_LLM_TEXT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Returns a malloc'd, NUL-terminated copy of the first `len` bytes of `s`
 * (s may hold NULs; NULL s gives ""), that is valid UTF-8 and at most
 * `max_bytes` bytes with its NUL (max_bytes >= 4):
 *  - line breaks and tabs become one space, other C0/C1 control characters,
 *    DEL and the Unicode bidi overrides (U+202A..U+202E, U+2066..U+2069) are
 *    dropped, so stored text cannot forge log lines or reorder what a reader
 *    sees;
 *  - each invalid UTF-8 byte becomes '?';
 *  - runs of spaces collapse, leading and trailing spaces go;
 *  - text cut at max_bytes ends with "..." on a character boundary.
 * The caller frees the result. Returns NULL only when out of memory.
 */
char *ap_llm_sanitize(const char *s, size_t len, size_t max_bytes);

#ifdef __cplusplus
}
#endif
#endif
