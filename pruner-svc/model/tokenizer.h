/*
 * tokenizer.h - Hugging Face `tokenizer.json` BPE tokenizers in plain C.
 *
 * Loads the fast-tokenizer JSON of the model families agentprune prunes and
 * reproduces, id for id, what Hugging Face's Rust `tokenizers` library
 * returns for the same text:
 *
 *   - byte-level BPE (GPT-2, Llama 3, Qwen2/2.5/3): a Split pre-tokenizer with
 *     the family's regex (compiled with PCRE2, UTF + UCP) and/or a ByteLevel
 *     pre-tokenizer, ByteLevel decoder;
 *   - SentencePiece-style BPE (Llama 2, Mistral, llama2.c models): normalizer
 *     Prepend("▁") + Replace(" ", "▁") or a Metaspace pre-tokenizer, BPE with
 *     byte_fallback (<0xXX> tokens), decoders Replace/ByteFallback/Fuse/Strip
 *     or Metaspace.
 *
 * Supported components (anything else is refused at load time with
 * AP_TOK_EUNSUPPORTED and a message naming it - never guessed):
 *   model           BPE (merges as "a b" strings or ["a","b"] pairs, unk_token,
 *                   fuse_unk, byte_fallback, ignore_merges; no dropout, no
 *                   continuing_subword_prefix / end_of_word_suffix)
 *   normalizer      null, NFC, Prepend, Replace (String pattern), Sequence
 *   pre_tokenizer   null, Split (Regex or String pattern, behavior Isolated,
 *                   invert false), ByteLevel (must come last), Metaspace,
 *                   Sequence
 *   post_processor  null, TemplateProcessing (single template), ByteLevel
 *                   (changes offsets only), Sequence
 *   decoder         null, ByteLevel, Replace (String), ByteFallback, Fuse,
 *                   Strip, Metaspace, Sequence
 *   added_tokens    split out of the text before normalization (leftmost-
 *                   longest), honouring lstrip, rstrip, single_word and
 *                   normalized like HF does.
 *
 * Text handling:
 *   - Input bytes that are not valid UTF-8 are replaced, one U+FFFD per
 *     maximal invalid subpart, before anything else. That is exactly what
 *     Rust's String::from_utf8_lossy and JavaScript's TextDecoder do, so the
 *     ids equal those HF tokenizers gives for the lossily decoded string.
 *   - Regexes: the JSON patterns use Oniguruma syntax; PCRE2 agrees on the
 *     constructs the families use. `\s` and `\S` are rewritten to Unicode
 *     White_Space (Oniguruma's meaning, which includes U+0085; PCRE2's UCP
 *     `\s` does not). \p{..} classes follow PCRE2's Unicode tables.
 *   - NFC uses tables generated from Unicode 14.0 (tokenizer_nfc_tables.h,
 *     made by tests/tokenizer/gen_nfc_tables.py), matched byte for byte to
 *     HF's NFC over every decomposable code point, with one HF quirk copied
 *     (U+11938 is left alone). Scripts added in Unicode 15-16 (Kawi, Todhri,
 *     Tulu-Tigalari, Gurung Khema, Kirat Rai) are not normalized, where HF
 *     (Unicode 16) would compose them.
 *
 * Thread safety: a loaded tokenizer is immutable; any number of threads may
 * call ap_tokenizer_encode/decode on it at once (each call allocates its own
 * scratch, including its cache of already tokenized pre-tokens).
 */
#ifndef AP_TOKENIZER_H
#define AP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every function that takes (err, errlen) writes a NUL-terminated one-line
 * message there on failure (truncated to errlen; err may be NULL). */
enum ap_tok_error {
  AP_TOK_OK = 0,
  AP_TOK_EARG = -1,         /* caller bug: NULL pointer; decode: an id with no token */
  AP_TOK_ENOMEM = -2,       /* allocation failed */
  AP_TOK_EIO = -3,          /* the file cannot be opened or read */
  AP_TOK_EJSON = -4,        /* not valid JSON (the message gives the byte offset) */
  AP_TOK_EFORMAT = -5,      /* valid JSON, but a required field is missing or mistyped, an id is
                               negative or duplicated, a merge is malformed or names a token the
                               vocab lacks, a template names an unknown special token */
  AP_TOK_EUNSUPPORTED = -6, /* a model / normalizer / pre-tokenizer / post-processor / decoder
                               type or option this implementation does not handle */
  AP_TOK_EREGEX = -7,       /* a Split pattern does not compile (PCRE2's message is given) */
  AP_TOK_EMATCH = -8,       /* encode: PCRE2 failed while matching (e.g. its heap limit) */
};

typedef struct ap_tokenizer ap_tokenizer;

/* Longest text one encode call takes (symbol indices are 32-bit). */
#define AP_TOKENIZER_MAX_TEXT ((size_t)1 << 30)

/*
 * Loads a Hugging Face tokenizer.json file.
 * On success returns 0 and sets *out (free it with ap_tokenizer_free).
 * On failure returns a negative AP_TOK_E* code, leaves *out NULL and writes
 * a message to err. The file is read whole; nothing refers to it afterwards.
 */
int ap_tokenizer_load(const char *path, ap_tokenizer **out, char *err, size_t errlen);

/*
 * Same as ap_tokenizer_load, from the JSON text in memory (json need not be
 * NUL-terminated; it is not kept).
 */
int ap_tokenizer_load_json(const char *json, size_t len, ap_tokenizer **out, char *err,
                           size_t errlen);

/*
 * Encodes len bytes of text (any bytes: invalid UTF-8 is replaced, see
 * above; NUL bytes are ordinary characters). With add_special != 0 the
 * post-processor's special tokens (e.g. BOS) are added, as HF's
 * encode(text, add_special_tokens=True) does. Added tokens that appear in
 * the text are always recognized, as in HF.
 * On success returns 0, *ids is a malloc'ed array of *n ids that the caller
 * frees with free() (*ids may be NULL when *n is 0).
 * Errors: AP_TOK_EARG (NULL t/ids/n, NULL text with len > 0, or len over
 * AP_TOKENIZER_MAX_TEXT),
 * AP_TOK_ENOMEM, AP_TOK_EMATCH; *ids is NULL and *n 0 then.
 */
int ap_tokenizer_encode(const ap_tokenizer *t, const char *text, size_t len, int add_special,
                        int32_t **ids, size_t *n);

/*
 * Decodes n ids to text, like HF's decode(ids, skip_special_tokens): with
 * skip_special != 0, ids of special added tokens are left out. Byte-level
 * output that is not valid UTF-8 (a multi-byte character cut between ids)
 * gets U+FFFD, as HF does.
 * On success returns 0; *text is a malloc'ed NUL-terminated string of *len
 * bytes (not counting the NUL) that the caller frees with free().
 * Errors: AP_TOK_EARG (NULL argument, or an id outside [0, vocab size) or
 * with no token), AP_TOK_ENOMEM.
 */
int ap_tokenizer_decode(const ap_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                        char **text, size_t *len);

/*
 * The id the post-processor puts first when add_special is set (BOS for
 * Llama 2 / Mistral / TinyLlama style files), or -1 when it adds nothing in
 * front (Qwen, GPT-2, and tokenizer.json files whose post-processor is only
 * ByteLevel).
 */
int32_t ap_tokenizer_bos_id(const ap_tokenizer *t);

/* Number of ids: 1 + the largest id of the vocab and of the added tokens. */
int32_t ap_tokenizer_vocab_size(const ap_tokenizer *t);

/*
 * The id of the token whose text is exactly str (looked up among added
 * tokens, then the model vocab as written in the JSON), or -1.
 */
int32_t ap_tokenizer_token_id(const ap_tokenizer *t, const char *str);

/* Frees t and everything it owns; NULL is allowed. */
void ap_tokenizer_free(ap_tokenizer *t);

#ifdef __cplusplus
}
#endif
#endif
