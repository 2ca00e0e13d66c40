/*
 * addr — e-mail address and phone number syntax (prefix addr_).
 *
 * addr_normalize() accepts what RFC 5321/5322 allow in a recipient
 * address (dot-atom or quoted local part of at most 64 octets, a domain of
 * LDH labels) and internationalised domains (IDNA2008 via libidn2: the
 * domain is converted to its A-label form, "açaí.com.br" →
 * "xn--aa-4iaz.com.br"), and writes the normalised form: trimmed, domain
 * lowercased. It refuses anything that could smuggle a header or a command
 * (CR, LF, NUL, controls, '<', '>', spaces outside quotes) and local parts
 * with non-ASCII characters (they need SMTPUTF8, which we do not use).
 *
 * addr_phone_e164() turns a phone number as people type it into E.164
 * digits with '+': "+55 (11) 98765-4321" → "+5511987654321". A number
 * without country code of 10 or 11 digits is taken as Brazilian (the
 * engine's first users); anything else needs the '+'.
 */
#ifndef CARTEIRO_ADDR_H
#define CARTEIRO_ADDR_H

#include <stddef.h>

#define ADDR_MAX 254

int addr_normalize(const char *in, char *out, size_t outlen, char *err,
	size_t errlen);
int addr_phone_e164(const char *in, char *out, size_t outlen, char *err,
	size_t errlen);

#endif
