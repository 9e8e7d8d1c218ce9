/*
 * Test plugin in C, built against include/capsd_plugin.h: driver "c-minimal" answers with
 * a small JSON document (capsd's JSON form), or an InvalidInput error when the query names a
 * virt type. Shows that nothing Rust-specific crosses the boundary.
 */
#include <stdlib.h>
#include <string.h>

#include "capsd_plugin.h"

static const char DOCUMENT[] = "{\"path\": \"/usr/bin/c-minimal\", \"domain\": \"test\", \"arch\": \"x86_64\"}";
static const char BAD_VIRTTYPE[] =
    "{\"message\": \"c-minimal has no virt types\", \"field\": \"virttype\", \"value\": \"(any)\","
    " \"reason\": \"c-minimal has no virt types\"}";

static void put(capsd_reply *out, uint32_t kind, uint32_t code, const char *text)
{
    size_t len = text ? strlen(text) : 0;
    out->kind = kind;
    out->code = code;
    out->data = NULL;
    out->len = 0;
    if (len > 0) {
        out->data = malloc(len);
        if (!out->data) {
            out->kind = CAPSD_REPLY_NONE;
            return;
        }
        memcpy(out->data, text, len);
        out->len = len;
    }
}

static void availability(void *instance, capsd_reply *out)
{
    (void)instance;
    put(out, CAPSD_REPLY_AVAILABLE, 0, NULL);
}

static void domain_capabilities(void *instance, const uint8_t *query, size_t query_len, capsd_reply *out)
{
    (void)instance;
    /* The query is not NUL-terminated: search it by length. */
    static const char key[] = "\"virtType\"";
    size_t klen = sizeof(key) - 1;
    for (size_t i = 0; query && i + klen <= query_len; i++) {
        if (memcmp(query + i, key, klen) == 0) {
            put(out, CAPSD_REPLY_ERROR, CAPSD_ERR_INVALID_INPUT, BAD_VIRTTYPE);
            return;
        }
    }
    put(out, CAPSD_REPLY_JSON, 0, DOCUMENT);
}

static void free_buffer(uint8_t *data, size_t len)
{
    (void)len;
    free(data);
}

static const capsd_plugin_v1_table TABLE = {
    .abi_version = CAPSD_PLUGIN_ABI_VERSION,
    .vtable_size = sizeof(capsd_plugin_v1_table),
    .name = "c-minimal",
    .instance = NULL,
    .availability = availability,
    .domain_capabilities = domain_capabilities,
    .free_buffer = free_buffer,
};

const capsd_plugin_v1_table *capsd_plugin_v1(void)
{
    return &TABLE;
}
