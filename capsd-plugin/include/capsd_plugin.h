/*
 * capsd plugin ABI, version 1: the C view of capsd-plugin's `abi` module, for plugins
 * written in C (or any language with a C FFI). The Rust definitions in
 * capsd-plugin/src/abi.rs are normative; this header mirrors them field for field, and
 * capsd-plugin's tests build a C plugin against it.
 *
 * A plugin is a shared library exporting
 *
 *     const capsd_plugin_v1_table *capsd_plugin_v1(void);
 *
 * which returns a table that stays valid while the library is loaded (NULL: the plugin
 * failed to initialise). capsd reads abi_version and vtable_size first and refuses the
 * plugin unless abi_version == CAPSD_PLUGIN_ABI_VERSION and vtable_size >= the size of this
 * table.
 *
 * Calls fill a capsd_reply that capsd zeroes first. Every non-NULL `data` a plugin puts in a
 * reply is handed back to its free_buffer with the same `len`, exactly once.
 *  - availability: CAPSD_REPLY_AVAILABLE, CAPSD_REPLY_UNAVAILABLE (data: UTF-8 reason) or
 *    CAPSD_REPLY_ERROR.
 *  - domain_capabilities: `query` is UTF-8 JSON with optional keys "emulator", "arch",
 *    "machine", "virtType"; the reply is CAPSD_REPLY_XML (libvirt's <domainCapabilities>
 *    document), CAPSD_REPLY_JSON (capsd's JSON form) or CAPSD_REPLY_ERROR with `code` one of
 *    CAPSD_ERR_* and data a UTF-8 JSON object: always "message", plus the fields of the error
 *    kind ("reason"; "what"; "field", "value", "reason"; "target", "reason"; "path", "reason",
 *    "os_error").
 * All functions may be called from several threads at once.
 *
 * capsd loads the library once in its own process to check the table, then calls
 * availability and domain_capabilities in a helper process of its own (one per plugin, one
 * call at a time, each under a deadline): a plugin that crashes, exits or hangs there fails
 * only its own requests, and its helper is replaced.
 */
#ifndef CAPSD_PLUGIN_H
#define CAPSD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define CAPSD_PLUGIN_ABI_VERSION 1u
#define CAPSD_PLUGIN_ENTRY_SYMBOL "capsd_plugin_v1"

enum {
    CAPSD_REPLY_NONE = 0,
    CAPSD_REPLY_XML = 1,
    CAPSD_REPLY_JSON = 2,
    CAPSD_REPLY_ERROR = 3,
    CAPSD_REPLY_AVAILABLE = 4,
    CAPSD_REPLY_UNAVAILABLE = 5,
};

enum {
    CAPSD_ERR_UNAVAILABLE = 1,
    CAPSD_ERR_NOT_SUPPORTED = 2,
    CAPSD_ERR_INVALID_INPUT = 3,
    CAPSD_ERR_PROBE_FAILED = 4,
    CAPSD_ERR_IO = 5,
    CAPSD_ERR_PANIC = 100,
    CAPSD_ERR_INTERNAL = 101,
};

typedef struct capsd_reply {
    uint32_t kind;
    uint32_t code;
    uint8_t *data;
    size_t len;
} capsd_reply;

typedef struct capsd_plugin_v1_table {
    uint32_t abi_version;
    uint32_t vtable_size;
    const char *name;
    void *instance;
    void (*availability)(void *instance, capsd_reply *out);
    void (*domain_capabilities)(void *instance, const uint8_t *query, size_t query_len, capsd_reply *out);
    void (*free_buffer)(uint8_t *data, size_t len);
} capsd_plugin_v1_table;

const capsd_plugin_v1_table *capsd_plugin_v1(void);

#endif /* CAPSD_PLUGIN_H */
