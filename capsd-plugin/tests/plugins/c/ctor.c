/*
 * Test plugin in C whose library constructor misbehaves as soon as the library is loaded,
 * before capsd ever calls its entry point. Built once per way (-DCTOR=...):
 *   1 (c-ctor-segv)  dereferences NULL;
 *   2 (c-ctor-exit)  calls _exit(7);
 *   3 (c-ctor-hang)  sleeps forever;
 *   4 (c-ctor-fork)  forks a child that calls setsid() (leaving the loader's process group
 *                    and session) and then waits forever; the constructor itself returns,
 *                    so the plugin loads and answers. When $CAPSD_TEST_CTOR_PIDFILE is set
 *                    the child writes its pid there (as the host's pid namespace sees it:
 *                    it asks /proc/self, which is the host's /proc).
 * Otherwise a small working plugin (a JSON document).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reply.h"

#if CTOR == 1
#define NAME "c-ctor-segv"
#elif CTOR == 2
#define NAME "c-ctor-exit"
#elif CTOR == 3
#define NAME "c-ctor-hang"
#elif CTOR == 4
#define NAME "c-ctor-fork"
#else
#error "build with -DCTOR=1 (segv), 2 (_exit), 3 (hang) or 4 (setsid'd child)"
#endif

#if CTOR == 4
/* The child's pid as /proc/self names it (the pid namespace /proc was mounted for). */
static void write_pidfile(void)
{
    const char *file = getenv("CAPSD_TEST_CTOR_PIDFILE");
    char self[64] = {0};
    if (!file || readlink("/proc/self", self, sizeof(self) - 1) <= 0) {
        return;
    }
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", file);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        return;
    }
    fprintf(f, "%s\n", self);
    fclose(f);
    rename(tmp, file);
}
#endif

__attribute__((constructor)) static void misbehave_on_load(void)
{
#if CTOR == 1
    volatile int *nowhere = NULL;
    *nowhere = 42;
#elif CTOR == 2
    _exit(7);
#elif CTOR == 3
    for (;;) {
        sleep(1000);
    }
#else
    pid_t child = fork();
    if (child == 0) {
        setsid();
        write_pidfile();
        for (;;) {
            pause();
        }
    }
#endif
}

static const char DOCUMENT[] = "{\"path\": \"/usr/bin/" NAME "\", \"domain\": \"test\", \"arch\": \"x86_64\"}";

static void domain_capabilities(void *instance, const uint8_t *query, size_t query_len, capsd_reply *out)
{
    (void)instance;
    (void)query;
    (void)query_len;
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
