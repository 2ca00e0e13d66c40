/*
 * mime — build one complete RFC 5322 / MIME message from rendered parts.
 *
 * The caller (the render worker) fills a mime_msg with UTF-8 strings that may
 * hold hostile contact data (CR, LF, NUL, header-looking text, huge values)
 * and gets canonical bytes appended to a buf_t: CRLF line ends everywhere,
 * no line longer than 998 octets, headers folded to <= 78 where possible,
 * and no way for data to start a header line or a MIME part of its own.
 * The rules (encodings, folding, structure) are documented in
 * docs/messages.md. Nothing is kept between calls: mime_build() is safe to
 * call from several threads at once with different output buffers.
 */
#ifndef CARTEIRO_MIME_H
#define CARTEIRO_MIME_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "engine/buf.h"

/* One extra header, e.g. { "X-Campaign-ID", "c-42" }. */
typedef struct mime_header {
	const char *name;   /* printable ASCII, no ':'; not one we generate */
	const char *value;  /* UTF-8, sanitized and encoded like Subject */
} mime_header;

typedef struct mime_msg {
	const char *from_name;      /* display name, may be NULL/"" */
	const char *from_addr;      /* required: local@domain, ASCII */
	const char *to_name;
	const char *to_addr;        /* required */
	const char *reply_to_name;
	const char *reply_to_addr;  /* optional: NULL = no Reply-To */
	const char *subject;        /* UTF-8, may be NULL */
	const char *text;           /* text/plain body, UTF-8, may be NULL */
	size_t text_len;            /* bytes of text (NULs inside are dropped) */
	const char *html;           /* text/html body, may be NULL */
	size_t html_len;
	const char *message_id;     /* "unique@host", formatted as <...> */
	time_t date;                /* formatted in UTC, "+0000" */
	const char *list_unsubscribe;      /* optional, ASCII: "<https://..>, <mailto:..>" */
	const char *list_unsubscribe_post; /* optional: "List-Unsubscribe=One-Click" */
	const char *feedback_id;           /* optional, ASCII */
	const mime_header *extra;   /* optional extra headers */
	size_t n_extra;
	uint64_t boundary_seed;     /* deterministic boundary per message */
} mime_msg;

/* Longest accepted address, display name, header value and body (bytes). */
#define MIME_MAX_ADDR 254
#define MIME_MAX_HEADER (256u * 1024u)
#define MIME_MAX_BODY (64u * 1024u * 1024u)

/*
 * Append the whole message (headers, blank line, body) to `out`.
 * Returns 0, or -1 with `err` naming the field at fault (an address that is
 * not local@domain, a bad extra header name, an over-long value); on error
 * `out` is left as it was.
 */
int mime_build(const mime_msg *m, buf_t *out, char *err, size_t errlen);

/*
 * SMTP transparency (RFC 5321 4.5.2): copy `in` to `out`, doubling a '.'
 * that starts a line, turning bare CR / bare LF into CRLF and making sure the
 * result ends with CRLF. The SMTP client then sends ".\r\n" after it.
 */
void mime_dot_stuff(const char *in, size_t len, buf_t *out);

/* The Content-Transfer-Encoding mime_build() picks for a body (exposed for
 * tests and docs): "7bit", "quoted-printable" or "base64". */
const char *mime_pick_encoding(const char *body, size_t len);

#endif
