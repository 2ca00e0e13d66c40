/*
 * htab — small hash tables for the loop thread (prefix ht_): a map from
 * NUL-terminated string keys to pointers (domains, sites), and a set of
 * 64-bit ids (messages in flight). Open addressing with linear probing and
 * tombstones; grows at 70% load. Not thread-safe: one owner.
 */
#ifndef CARTEIRO_HTAB_H
#define CARTEIRO_HTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ht_map {
	struct ht_slot *slots;
	size_t cap, len, used;     /* used counts tombstones too */
} ht_map;

/* The key is copied; the value is the caller's. */
void *ht_get(const ht_map *m, const char *key);
void ht_put(ht_map *m, const char *key, void *val);
void *ht_del(ht_map *m, const char *key);
/* Iterate: start with *pos = 0; returns false at the end. */
bool ht_next(const ht_map *m, size_t *pos, const char **key, void **val);
void ht_free(ht_map *m);

typedef struct ht_set {
	uint64_t *keys;            /* 0 = empty, UINT64_MAX = tombstone */
	size_t cap, len, used;
} ht_set;

/* Ids 0 and UINT64_MAX cannot be stored. Returns false if already there. */
bool ht_set_add(ht_set *s, uint64_t id);
bool ht_set_has(const ht_set *s, uint64_t id);
bool ht_set_del(ht_set *s, uint64_t id);
void ht_set_free(ht_set *s);

uint64_t ht_hash(const void *p, size_t n);

#endif
