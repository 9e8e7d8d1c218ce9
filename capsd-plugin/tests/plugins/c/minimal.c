/*
 * Test plugin in C, built against include/capsd_plugin.h: driver "c-minimal" answers with
 * a small JSON document (capsd's JSON form), or an InvalidInput error when the query names a
 * virt type. Shows that nothing Rust-specific crosses the boundary.
 */
#include <string.h>

#include "reply.h"

static const char DOCUMENT[] = "{\"path\": \"/usr/bin/c-minimal\", \"domain\": \"test\", \"arch\": \"x86_64\"}";
static const char BAD_VIRTTYPE[] =
    "{\"message\": \"c-minimal has no virt types\", \"field\": \"virttype\", \"value\": \"(any)\","
    " \"reason\": \"c-minimal has no virt types\"}";

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
