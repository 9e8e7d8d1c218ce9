//! capsd-plugin: the out-of-tree driver ABI (being written, issue 7).
