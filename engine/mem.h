/*
 * mem — allocation that never returns NULL.
 *
 * Like Postfix's mymalloc(), running out of memory is fatal: the engine logs
 * and aborts rather than threading ENOMEM through every caller. Queued work is
 * safe in LMDB, so a restart loses nothing that was acknowledged.
 */
#ifndef CARTEIRO_MEM_H
#define CARTEIRO_MEM_H

#include <stddef.h>

void *mem_alloc(size_t n);
void *mem_calloc(size_t nmemb, size_t size);
void *mem_realloc(void *p, size_t n);
/* Grow an array of `*cap` elements of `size` bytes to hold at least `need`. */
void *mem_grow(void *p, size_t *cap, size_t need, size_t size);
char *mem_strdup(const char *s);
char *mem_strndup(const char *s, size_t n);
void *mem_memdup(const void *p, size_t n);

#endif
