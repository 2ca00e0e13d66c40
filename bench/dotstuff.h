/*
 * dotstuff — streaming SMTP DATA decoder: dot-unstuffing and end detection.
 *
 * Feed the bytes that follow a 354 reply in chunks of any size (even one byte
 * at a time); the decoder removes the leading dot of stuffed lines, detects
 * the terminating CRLF.CRLF across chunk boundaries and holds at most two
 * bytes of state, so memory stays bounded whatever the message size. The
 * caller owns the output buffer (or passes NULL to only count bytes).
 */
#ifndef CARTEIRO_DOTSTUFF_H
#define CARTEIRO_DOTSTUFF_H

#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"

typedef struct dot {
	int st;          /* internal state, 0 = start of line */
	uint64_t bytes;  /* unstuffed content bytes produced so far */
} dot_t;

/* Reset for a new message (the first byte fed is the start of a line). */
void dot_reset(dot_t *d);
/*
 * Decode up to n bytes of p. Unstuffed content is appended to out when out
 * is not NULL. Returns the number of bytes consumed; *done is set to 1 when
 * the terminator ".\r\n" was consumed (the rest of p is then not read: it is
 * the next pipelined command), else 0.
 */
size_t dot_feed(dot_t *d, const char *p, size_t n, buf_t *out, int *done);

#endif
