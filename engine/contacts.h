/*
 * contacts — reading a campaign's contact list (prefix ct_): CSV with a
 * header row (libcsv, RFC 4180 quoting, strict) or NDJSON (jansson, one
 * object per line; nested values such as cart items allowed).
 *
 * Streaming: one contact at a time goes to the caller's callback as a
 * jansson object with its line number, so a million contacts never sit in
 * memory. CSV values are strings; every column of the header becomes a key.
 * Errors say file:line (and the column for CSV): a malformed row, a row
 * whose field count differs from the header, a duplicate or empty header
 * name, invalid UTF-8, a line that is not a JSON object.
 */
#ifndef CARTEIRO_CONTACTS_H
#define CARTEIRO_CONTACTS_H

#include <jansson.h>
#include <stddef.h>

#define CT_FIELD_MAX (1u << 20)   /* bytes per value */
#define CT_LINE_MAX  (4u << 20)   /* bytes per NDJSON line / CSV row */

/* Return 0 to go on, non-zero to stop (the value is returned by ct_read).
 * `c` is borrowed; incref to keep it. */
typedef int (*ct_cb)(void *arg, json_t *c, unsigned long line);

/* format: "csv" or "ndjson". Returns 0 when the whole file was read, the
 * callback's non-zero value when it stopped, or -1 with err/where set. */
int ct_read(const char *path, const char *format, ct_cb cb, void *arg,
	char *err, size_t errlen, char *where, size_t wherelen);

#endif
