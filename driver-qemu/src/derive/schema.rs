//! A read-only index over QEMU's QMP introspection (`query-qmp-schema`): which commands
//! exist, what a command takes and returns, the members and union branches of an object
//! type. Type names in the introspection are opaque (QEMU numbers them), so every lookup
//! starts from a command name and walks through `arg-type` / `ret-type` / member types.

use std::collections::HashMap;

use crate::probe_data::View;

/// The schema, indexed by entity name. Built over the reply in place ([`View`]): an index
/// of the entity names, each entity read only when looked up.
#[derive(Debug, Default)]
pub struct Schema<'a> {
    by_name: HashMap<&'a str, View<'a>>,
    /// The run the schema came from (`kvm`/`tcg`), for evidence.
    run: Option<&'static str>,
}

impl<'a> Schema<'a> {
    /// Index the reply of `query-qmp-schema` (an array of entities). Anything that is not
    /// an object with a `name` is ignored; a reply that is not an array gives an empty
    /// schema (every lookup then says "not there").
    pub fn new(reply: Option<View<'a>>) -> Schema<'a> {
        let mut by_name = HashMap::new();
        if let Some(list) = reply {
            for entity in list.array() {
                if let Some(name) = entity.get("name").and_then(|n| n.as_str()) {
                    by_name.insert(name, entity);
                }
            }
        }
        Schema { by_name, run: None }
    }

    /// Name the run the schema came from in the evidence it records.
    pub fn with_run(mut self, run: &'static str) -> Self {
        self.run = Some(run);
        self
    }

    /// Evidence (`capsd explain`): the schema has `item` or not.
    fn note(&self, item: impl FnOnce() -> String, holds: bool) -> bool {
        capsd_core::evidence::fact(|| capsd_core::evidence::Fact::Qmp {
            command: "query-qmp-schema".into(),
            run: self.run.map(str::to_owned),
            item: item(),
            holds,
        });
        holds
    }

    /// Whether the schema was present at all.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn entity(&self, name: &str) -> Option<View<'a>> {
        self.by_name.get(name).copied()
    }

    fn meta_type(&self, name: &str) -> Option<&'a str> {
        self.entity(name)?.get("meta-type")?.as_str()
    }

    /// Whether `name` is a command.
    pub fn has_command(&self, name: &str) -> bool {
        self.note(|| format!("command {name}"), self.is_command(name))
    }

    fn is_command(&self, name: &str) -> bool {
        self.meta_type(name) == Some("command")
    }

    /// The type name of a command's arguments.
    pub fn command_arg_type(&self, command: &str) -> Option<&'a str> {
        if !self.is_command(command) {
            return None;
        }
        self.entity(command)?.get("arg-type")?.as_str()
    }

    /// The type name of a command's return value.
    pub fn command_ret_type(&self, command: &str) -> Option<&'a str> {
        if !self.is_command(command) {
            return None;
        }
        self.entity(command)?.get("ret-type")?.as_str()
    }

    /// The type of member `member` of object type `object` (including members of any
    /// union branch).
    pub fn member_type(&self, object: &str, member: &str) -> Option<&'a str> {
        let obj = self.entity(object)?;
        let direct = obj
            .get("members")
            .into_iter()
            .flat_map(|m| m.array())
            .find(|m| m.get("name").and_then(|n| n.as_str()) == Some(member))
            .and_then(|m| m.get("type")?.as_str());
        if direct.is_some() {
            return direct;
        }
        self.variants(object).into_iter().find_map(|(_, ty)| self.member_type(ty, member))
    }

    /// The `(case, type)` pairs of a union object type; empty for a plain object.
    pub fn variants(&self, object: &str) -> Vec<(&'a str, &'a str)> {
        let Some(obj) = self.entity(object) else { return Vec::new() };
        obj.get("variants")
            .into_iter()
            .flat_map(|v| v.array())
            .filter_map(|v| Some((v.get("case")?.as_str()?, v.get("type")?.as_str()?)))
            .collect()
    }

    /// Whether union type `object` has a branch named `case`.
    pub fn has_variant(&self, object: &str, case: &str) -> bool {
        self.variants(object).iter().any(|(c, _)| *c == case)
    }

    /// Whether the value returned by `command` is a union with branch `case`.
    pub fn ret_has_variant(&self, command: &str, case: &str) -> bool {
        let holds = self.command_ret_type(command).is_some_and(|t| self.has_variant(t, case));
        self.note(|| format!("{command} returns branch {case}"), holds)
    }

    /// Whether the arguments of `command` are a union with branch `case` (`netdev_add`'s
    /// `Netdev`: `user`, `stream`, ...).
    pub fn arg_has_variant(&self, command: &str, case: &str) -> bool {
        let holds = self.command_arg_type(command).is_some_and(|t| self.has_variant(t, case));
        self.note(|| format!("{command} takes branch {case}"), holds)
    }

    /// Whether argument `member` of `command` is a union with branch `case`.
    pub fn arg_member_has_variant(&self, command: &str, member: &str, case: &str) -> bool {
        let holds = self
            .command_arg_type(command)
            .and_then(|t| self.member_type(t, member))
            .is_some_and(|t| self.has_variant(t, case));
        self.note(|| format!("{command} argument {member} takes branch {case}"), holds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::encode_value;
    use serde_json::{json, Value};

    fn sample() -> Value {
        json!([
            {"name": "query-display-options", "meta-type": "command", "arg-type": "0", "ret-type": "10"},
            {"name": "chardev-add", "meta-type": "command", "arg-type": "20", "ret-type": "0"},
            {"name": "SHUTDOWN", "meta-type": "event", "arg-type": "0"},
            {"name": "0", "meta-type": "object", "members": []},
            {"name": "10", "meta-type": "object", "members": [{"name": "type", "type": "11"}],
             "tag": "type", "variants": [{"case": "sdl", "type": "12"}, {"case": "dbus", "type": "13"}]},
            {"name": "20", "meta-type": "object", "members": [{"name": "id", "type": "str"}, {"name": "backend", "type": "21"}]},
            {"name": "21", "meta-type": "object", "members": [{"name": "type", "type": "22"}],
             "tag": "type", "variants": [{"case": "pty", "type": "23"}, {"case": "spicevmc", "type": "24"}]}
        ])
    }

    #[test]
    fn commands_and_events() {
        let v = encode_value(&sample());
        let s = Schema::new(Some(View::new(&v)));
        assert!(s.has_command("chardev-add"));
        assert!(!s.has_command("SHUTDOWN"), "an event is not a command");
        assert!(!s.has_command("query-spice"));
    }

    #[test]
    fn union_branches() {
        let v = encode_value(&sample());
        let s = Schema::new(Some(View::new(&v)));
        assert!(s.ret_has_variant("query-display-options", "sdl"));
        assert!(!s.ret_has_variant("query-display-options", "gtk"));
        assert!(s.arg_member_has_variant("chardev-add", "backend", "spicevmc"));
        assert!(!s.arg_member_has_variant("chardev-add", "backend", "spiceport"));
        assert!(!s.arg_member_has_variant("chardev-add", "nosuch", "pty"));
    }

    #[test]
    fn missing_or_malformed_schema_says_nothing() {
        let s = Schema::new(None);
        assert!(s.is_empty());
        assert!(!s.has_command("query-vnc"));
        let bad = encode_value(&json!({"not": "an array"}));
        assert!(Schema::new(Some(View::new(&bad))).is_empty());
        // Damaged bytes read as an empty or partial schema, never a panic.
        let good = encode_value(&sample());
        for cut in 0..good.len() {
            let s = Schema::new(Some(View::new(&good[..cut])));
            let _ = s.arg_member_has_variant("chardev-add", "backend", "spicevmc");
        }
    }
}
