/*
 * What the C test plugins share: filling a reply with a malloc'ed copy of a text, the
 * matching free_buffer, and an availability that always says "available".
 */
#ifndef CAPSD_TEST_REPLY_H
#define CAPSD_TEST_REPLY_H

#include <stdlib.h>
#include <string.h>

#include "capsd_plugin.h"

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

static void free_buffer(uint8_t *data, size_t len)
{
    (void)len;
    free(data);
}

#endif /* CAPSD_TEST_REPLY_H */
