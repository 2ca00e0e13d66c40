/*
 * mem — allocation that never returns NULL; see mem.h.
 */
#include "engine/mem.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
mem_fail(size_t n)
{
	fprintf(stderr, "carteiro: fatal: out of memory (%zu bytes)\n", n);
	abort();
}

void *
mem_alloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		mem_fail(n);
	return p;
}

void *
mem_calloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
	if (p == NULL)
		mem_fail(nmemb * size);
	return p;
}

void *
mem_realloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (q == NULL)
		mem_fail(n);
	return q;
}

void *
mem_grow(void *p, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return p;
	size_t ncap = *cap ? *cap : 8;
	while (ncap < need) {
		if (ncap > SIZE_MAX / 2)
			mem_fail(SIZE_MAX);
		ncap *= 2;
	}
	if (size && ncap > SIZE_MAX / size)
		mem_fail(SIZE_MAX);
	p = mem_realloc(p, ncap * size);
	*cap = ncap;
	return p;
}

char *
mem_strdup(const char *s)
{
	return mem_memdup(s, strlen(s) + 1);
}

char *
mem_strndup(const char *s, size_t n)
{
	char *p = mem_alloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

void *
mem_memdup(const void *src, size_t n)
{
	void *p = mem_alloc(n);
	if (n)
		memcpy(p, src, n);
	return p;
}
