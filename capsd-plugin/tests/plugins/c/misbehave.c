/*
 * Test plugin in C that kills or blocks the process it runs in, built once per way
 * (-DMISBEHAVE=...): dereferences NULL, calls abort(), calls exit(3), or sleeps forever in
 * domain_capabilities, but only for a query with arch "aarch64". Any other query gets a
 * small JSON document, so a test can show the plugin answering again after the bad one.
 * Driver names: c-segv, c-abort, c-exit, c-hang.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reply.h"

#define SEGV 1
#define ABORT 2
#define EXIT 3
#define HANG 4

#if MISBEHAVE == SEGV
#define NAME "c-segv"
#elif MISBEHAVE == ABORT
#define NAME "c-abort"
#elif MISBEHAVE == EXIT
#define NAME "c-exit"
#elif MISBEHAVE == HANG
#define NAME "c-hang"
#else
#error "build with -DMISBEHAVE=1 (segv), 2 (abort), 3 (exit) or 4 (hang)"
#endif

static const char DOCUMENT[] = "{\"path\": \"/usr/bin/" NAME "\", \"domain\": \"test\", \"arch\": \"x86_64\"}";
static const char TRIGGER[] = "\"arch\":\"aarch64\"";

static int triggered(const uint8_t *query, size_t len)
{
    size_t tlen = sizeof(TRIGGER) - 1;
    for (size_t i = 0; query && i + tlen <= len; i++) {
        if (memcmp(query + i, TRIGGER, tlen) == 0) {
            return 1;
        }
    }
    return 0;
}

static void misbehave(void)
{
#if MISBEHAVE == SEGV
    volatile int *nowhere = NULL;
    *nowhere = 42;
#elif MISBEHAVE == ABORT
    abort();
#elif MISBEHAVE == EXIT
    exit(3);
#else
    for (;;) {
        sleep(1000);
    }
#endif
}

static void domain_capabilities(void *instance, const uint8_t *query, size_t query_len, capsd_reply *out)
{
    (void)instance;
    if (triggered(query, query_len)) {
        misbehave();
    }
    put(out, CAPSD_REPLY_JSON, 0, DOCUMENT);
}

static const capsd_plugin_v1_table TABLE = {
    .abi_version = CAPSD_PLUGIN_ABI_VERSION,
    .vtable_size = sizeof(capsd_plugin_v1_table),
    .name = NAME,
    .instance = NULL,
    .availability = availability,
    .domain_capabilities = domain_capabilities,
    .free_buffer = free_buffer,
};

const capsd_plugin_v1_table *capsd_plugin_v1(void)
{
    return &TABLE;
}
