/*
 * Test plugin in C that needs a symbol nothing provides: capsd loads plugins with RTLD_NOW,
 * so it is refused at load time instead of failing in the middle of a query.
 */
#include "capsd_plugin.h"

extern const capsd_plugin_v1_table *capsd_test_symbol_nobody_defines(void);

const capsd_plugin_v1_table *capsd_plugin_v1(void)
{
    return capsd_test_symbol_nobody_defines();
}
