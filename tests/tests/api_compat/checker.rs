//! The wire-compatibility rules of docs/design/api-evolution.md, checked between two descriptor
//! sets of one package: what an old client or server relies on must still mean the same thing.
//!
//! Only definitions of the guarded package are compared (imports such as
//! `google.protobuf.Timestamp` are someone else's API). Additions are never reported.

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use std::collections::BTreeMap;
use std::fmt;

/// One breaking change from the baseline to the current descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// A message is gone (removed, renamed or moved to another package).
    MessageRemoved { message: String },
    /// An enum is gone.
    EnumRemoved { name: String },
    /// A service is gone.
    ServiceRemoved { service: String },
    /// An RPC of a service that is still there is gone (removed or renamed).
    RpcRemoved { service: String, rpc: String },
    /// An RPC takes or returns another message.
    RpcTypeChanged { rpc: String, side: Side, was: String, now: String },
    /// An RPC's request or response became streaming or stopped being streaming.
    RpcStreamingChanged { rpc: String, side: Side, was: bool, now: bool },
    /// A field number no longer exists and is not reserved: a later field could reuse it.
    FieldRemoved { message: String, number: i32, name: String },
    /// The field with this number has another name (JSON and text formats break).
    FieldRenamed { message: String, number: i32, was: String, now: String },
    /// The field with this number has another type.
    FieldTypeChanged { message: String, number: i32, name: String, was: String, now: String },
    /// The field with this number changed between singular, `optional` and `repeated`.
    FieldLabelChanged { message: String, number: i32, name: String, was: &'static str, now: &'static str },
    /// The field moved into, out of, or between oneofs.
    FieldOneofChanged { message: String, number: i32, name: String, was: String, now: String },
    /// An enum value number no longer exists and is not reserved.
    EnumValueRemoved { name: String, number: i32, value: String },
    /// The enum value with this number has another name (JSON carries the name).
    EnumValueRenamed { name: String, number: i32, was: String, now: String },
}

/// Which half of an RPC changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Request => "request",
            Side::Response => "response",
        })
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::MessageRemoved { message } => write!(f, "message {message} was removed or renamed"),
            Break::EnumRemoved { name } => write!(f, "enum {name} was removed or renamed"),
            Break::ServiceRemoved { service } => write!(f, "service {service} was removed or renamed"),
            Break::RpcRemoved { service, rpc } => write!(f, "rpc {service}.{rpc} was removed or renamed"),
            Break::RpcTypeChanged { rpc, side, was, now } => {
                write!(f, "rpc {rpc}: the {side} type changed from {was} to {now}")
            }
            Break::RpcStreamingChanged { rpc, side, was, now } => {
                let mode = |streaming: &bool| if *streaming { "streaming" } else { "unary" };
                write!(f, "rpc {rpc}: the {side} changed from {} to {}", mode(was), mode(now))
            }
            Break::FieldRemoved { message, number, name } => write!(
                f,
                "{message}: field {number} ({name}) was removed without `reserved {number}; reserved \"{name}\";`"
            ),
            Break::FieldRenamed { message, number, was, now } => {
                write!(f, "{message}: field {number} was renamed from {was} to {now}")
            }
            Break::FieldTypeChanged { message, number, name, was, now } => {
                write!(f, "{message}: field {number} ({name}) changed type from {was} to {now}")
            }
            Break::FieldLabelChanged { message, number, name, was, now } => {
                write!(f, "{message}: field {number} ({name}) changed from {was} to {now}")
            }
            Break::FieldOneofChanged { message, number, name, was, now } => {
                write!(f, "{message}: field {number} ({name}) moved from oneof {was} to oneof {now}")
            }
            Break::EnumValueRemoved { name, number, value } => {
                write!(f, "{name}: value {number} ({value}) was removed without `reserved {number};`")
            }
            Break::EnumValueRenamed { name, number, was, now } => {
                write!(f, "{name}: value {number} was renamed from {was} to {now}")
            }
        }
    }
}

/// The breaking changes of `package` from `baseline` to `current`, in a stable order.
pub fn breaking_changes(baseline: &FileDescriptorSet, current: &FileDescriptorSet, package: &str) -> Vec<Break> {
    let (old, new) = (Definitions::of(baseline, package), Definitions::of(current, package));
    let mut breaks = Vec::new();
    for (name, old_message) in &old.messages {
        match new.messages.get(name) {
            None => breaks.push(Break::MessageRemoved { message: name.clone() }),
            Some(new_message) => compare_message(name, old_message, new_message, &mut breaks),
        }
    }
    for (name, old_enum) in &old.enums {
        match new.enums.get(name) {
            None => breaks.push(Break::EnumRemoved { name: name.clone() }),
            Some(new_enum) => compare_enum(name, old_enum, new_enum, &mut breaks),
        }
    }
    for (service, old_rpcs) in &old.services {
        let Some(new_rpcs) = new.services.get(service) else {
            breaks.push(Break::ServiceRemoved { service: service.clone() });
            continue;
        };
        for (rpc_name, was) in old_rpcs {
            let rpc = format!("{service}.{rpc_name}");
            let Some(now) = new_rpcs.get(rpc_name) else {
                breaks.push(Break::RpcRemoved { service: service.clone(), rpc: rpc_name.clone() });
                continue;
            };
            for (side, was_type, now_type, was_stream, now_stream) in [
                (Side::Request, &was.input, &now.input, was.client_streaming, now.client_streaming),
                (Side::Response, &was.output, &now.output, was.server_streaming, now.server_streaming),
            ] {
                if was_type != now_type {
                    breaks.push(Break::RpcTypeChanged {
                        rpc: rpc.clone(),
                        side,
                        was: was_type.clone(),
                        now: now_type.clone(),
                    });
                }
                if was_stream != now_stream {
                    breaks.push(Break::RpcStreamingChanged {
                        rpc: rpc.clone(),
                        side,
                        was: was_stream,
                        now: now_stream,
                    });
                }
            }
        }
    }
    breaks
}

/// The definitions of `current` that `baseline` does not have: messages, enums, services, RPCs,
/// fields and enum values, by full name. Informational (additions are compatible); a baseline
/// that lacks them cannot catch their later removal.
pub fn additions(baseline: &FileDescriptorSet, current: &FileDescriptorSet, package: &str) -> Vec<String> {
    let (old, new) = (Definitions::of(baseline, package), Definitions::of(current, package));
    let mut added = Vec::new();
    for (name, message) in &new.messages {
        match old.messages.get(name) {
            None => added.push(format!("message {name}")),
            Some(before) => added.extend(
                message
                    .field
                    .iter()
                    .filter(|f| !before.field.iter().any(|b| b.number() == f.number()))
                    .map(|f| format!("field {name}.{} = {}", f.name(), f.number())),
            ),
        }
    }
    for (name, values) in &new.enums {
        match old.enums.get(name) {
            None => added.push(format!("enum {name}")),
            Some(before) => added.extend(
                values
                    .value
                    .iter()
                    .filter(|v| !before.value.iter().any(|b| b.number() == v.number()))
                    .map(|v| format!("enum value {name}.{} = {}", v.name(), v.number())),
            ),
        }
    }
    for (service, rpcs) in &new.services {
        match old.services.get(service) {
            None => added.push(format!("service {service}")),
            Some(before) => added
                .extend(rpcs.keys().filter(|rpc| !before.contains_key(*rpc)).map(|rpc| format!("rpc {service}.{rpc}"))),
        }
    }
    added
}

/// An RPC as the wire sees it.
struct Rpc {
    input: String,
    output: String,
    client_streaming: bool,
    server_streaming: bool,
}

/// Every message, enum (nested ones included) and service of one package, by full name.
#[derive(Default)]
struct Definitions<'a> {
    messages: BTreeMap<String, &'a DescriptorProto>,
    enums: BTreeMap<String, &'a EnumDescriptorProto>,
    services: BTreeMap<String, BTreeMap<String, Rpc>>,
}

impl<'a> Definitions<'a> {
    fn of(set: &'a FileDescriptorSet, package: &str) -> Definitions<'a> {
        let mut definitions = Definitions::default();
        for file in set.file.iter().filter(|f| f.package() == package) {
            for message in &file.message_type {
                definitions.add_message(package, message);
            }
            for enumeration in &file.enum_type {
                definitions.enums.insert(format!("{package}.{}", enumeration.name()), enumeration);
            }
            for service in &file.service {
                let rpcs = service
                    .method
                    .iter()
                    .map(|m| {
                        let rpc = Rpc {
                            input: m.input_type().trim_start_matches('.').to_string(),
                            output: m.output_type().trim_start_matches('.').to_string(),
                            client_streaming: m.client_streaming(),
                            server_streaming: m.server_streaming(),
                        };
                        (m.name().to_string(), rpc)
                    })
                    .collect();
                definitions.services.insert(format!("{package}.{}", service.name()), rpcs);
            }
        }
        definitions
    }

    fn add_message(&mut self, scope: &str, message: &'a DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for enumeration in &message.enum_type {
            self.enums.insert(format!("{name}.{}", enumeration.name()), enumeration);
        }
        self.messages.insert(name, message);
    }
}

fn compare_message(name: &str, old: &DescriptorProto, new: &DescriptorProto, breaks: &mut Vec<Break>) {
    for was in &old.field {
        let number = was.number();
        let Some(now) = new.field.iter().find(|f| f.number() == number) else {
            // Message reserved ranges are half-open: [start, end).
            let reserved = new.reserved_range.iter().any(|r| r.start() <= number && number < r.end());
            if !reserved {
                breaks.push(Break::FieldRemoved { message: name.to_string(), number, name: was.name().to_string() });
            }
            continue;
        };
        let field = || (name.to_string(), number, now.name().to_string());
        if was.name() != now.name() {
            breaks.push(Break::FieldRenamed {
                message: name.to_string(),
                number,
                was: was.name().to_string(),
                now: now.name().to_string(),
            });
        }
        if field_type(was) != field_type(now) {
            let (message, number, name) = field();
            breaks.push(Break::FieldTypeChanged { message, number, name, was: field_type(was), now: field_type(now) });
        }
        if cardinality(was) != cardinality(now) {
            let (message, number, name) = field();
            breaks.push(Break::FieldLabelChanged {
                message,
                number,
                name,
                was: cardinality(was),
                now: cardinality(now),
            });
        }
        let (was_oneof, now_oneof) = (real_oneof(old, was), real_oneof(new, now));
        if was_oneof != now_oneof {
            let (message, number, name) = field();
            let show = |oneof: Option<&str>| oneof.unwrap_or("(none)").to_string();
            breaks.push(Break::FieldOneofChanged { message, number, name, was: show(was_oneof), now: show(now_oneof) });
        }
    }
}

fn compare_enum(name: &str, old: &EnumDescriptorProto, new: &EnumDescriptorProto, breaks: &mut Vec<Break>) {
    for was in &old.value {
        let number = was.number();
        match new.value.iter().find(|v| v.number() == number) {
            // Enum reserved ranges are closed: [start, end].
            None if new.reserved_range.iter().any(|r| r.start() <= number && number <= r.end()) => {}
            None => {
                breaks.push(Break::EnumValueRemoved { name: name.to_string(), number, value: was.name().to_string() })
            }
            Some(now) if now.name() != was.name() => breaks.push(Break::EnumValueRenamed {
                name: name.to_string(),
                number,
                was: was.name().to_string(),
                now: now.name().to_string(),
            }),
            Some(_) => {}
        }
    }
}

/// `string`, `uint64`, `hangar.v1.Node`, …: scalars by their proto name, messages and enums by
/// their full name.
fn field_type(field: &FieldDescriptorProto) -> String {
    match field.r#type() {
        Type::Message | Type::Enum | Type::Group => field.type_name().trim_start_matches('.').to_string(),
        scalar => scalar.as_str_name().trim_start_matches("TYPE_").to_ascii_lowercase(),
    }
}

/// `repeated`, `optional` (explicit presence) or `singular`.
fn cardinality(field: &FieldDescriptorProto) -> &'static str {
    match field.label() {
        Label::Repeated => "repeated",
        Label::Required => "required",
        Label::Optional if field.proto3_optional() => "optional",
        Label::Optional => "singular",
    }
}

/// The oneof a field belongs to, leaving out the synthetic oneof of a proto3 `optional` field.
fn real_oneof<'a>(message: &'a DescriptorProto, field: &FieldDescriptorProto) -> Option<&'a str> {
    if field.proto3_optional() {
        return None;
    }
    let index = usize::try_from(field.oneof_index?).ok()?;
    message.oneof_decl.get(index).map(|oneof| oneof.name())
}
