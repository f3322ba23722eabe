//! The one authorization table: every method the controller serves and who may call it. The
//! auth layer asks [`access`]; `docs/security.md` prints [`markdown`] (a test keeps the two
//! equal), and another test fails when `hangar.v1` gains a method this table does not name.

use super::Role;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without credentials (health checks; reflection by default).
    Open,
    /// Any principal the auth file names, whatever its role (`--reflection authenticated`).
    Authenticated,
    /// Principals whose role includes this one (`Role::includes`): the least role that may call.
    Least(Role),
}

/// Whether and to whom the controller serves gRPC server reflection (`--reflection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Reflection {
    /// Served to everyone, like health: it describes the API, which is public anyway.
    #[default]
    Open,
    /// Served to any authenticated principal.
    Authenticated,
    /// Not served.
    Off,
}

impl Reflection {
    pub fn served(self) -> bool {
        self != Reflection::Off
    }
}

/// Every method of `hangar.v1`, as its HTTP/2 path, with the least role that may call it.
pub const METHODS: &[(&str, Role)] = &[
    ("/hangar.v1.NodeService/ListNodes", Role::Reader),
    ("/hangar.v1.NodeService/GetNode", Role::Reader),
    ("/hangar.v1.NodeService/WatchNodes", Role::Reader),
    ("/hangar.v1.NodeService/DrainNode", Role::Operator),
    ("/hangar.v1.NodeService/UndrainNode", Role::Operator),
    ("/hangar.v1.BackendService/ListBackends", Role::Reader),
    ("/hangar.v1.BackendService/GetBackend", Role::Reader),
    ("/hangar.v1.BackendService/WatchBackend", Role::Reader),
    ("/hangar.v1.BackendService/WatchBackends", Role::Reader),
    ("/hangar.v1.BackendService/Connect", Role::Client),
    ("/hangar.v1.BackendService/TerminateBackend", Role::Client),
    ("/hangar.v1.DroneService/Attach", Role::Drone),
    ("/hangar.v1.ProxyService/Attach", Role::Proxy),
    ("/hangar.v1.ProxyService/LookupRoute", Role::Proxy),
];

/// Health checks: open to everyone, always (load balancers and orchestrators probe without
/// credentials).
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Both versions of server reflection; their access is the `--reflection` setting.
pub const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Who may call the method at `path` (`/package.Service/Method`). A path the table does not
/// name is for admins only, so a method added without an entry is never open by accident.
pub fn access(path: &str, reflection: Reflection) -> Access {
    if let Some((_, role)) = METHODS.iter().find(|(method, _)| *method == path) {
        return Access::Least(*role);
    }
    let service = path.strip_prefix('/').and_then(|p| p.split_once('/')).map(|(service, _)| service);
    match service {
        Some(HEALTH_SERVICE) => Access::Open,
        Some(service) if REFLECTION_SERVICES.contains(&service) => match reflection {
            Reflection::Open => Access::Open,
            Reflection::Authenticated => Access::Authenticated,
            // Not served: only admins learn that (UNIMPLEMENTED), like any unknown path.
            Reflection::Off => Access::Least(Role::Admin),
        },
        _ => Access::Least(Role::Admin),
    }
}

/// The roles that hold `least`, in ladder order: "reader, client, operator, admin".
fn holders(least: Role) -> String {
    Role::ALL.iter().filter(|role| role.includes(least)).map(|role| role.as_str()).collect::<Vec<_>>().join(", ")
}

/// The table as `docs/security.md` shows it, between `<!-- roles-table:start -->` and
/// `<!-- roles-table:end -->`.
pub fn markdown() -> String {
    let mut out = String::from("| Method | Least role | Roles that may call it |\n| --- | --- | --- |\n");
    for (path, role) in METHODS {
        out.push_str(&format!("| `{}` | {role} | {} |\n", path.trim_start_matches('/'), holders(*role)));
    }
    out.push_str(&format!("| `{HEALTH_SERVICE}/*` | open | everyone, with or without credentials |\n"));
    let reflection = REFLECTION_SERVICES.map(|service| format!("`{service}/*`")).join(", ");
    out.push_str(&format!(
        "| {reflection} | `--reflection open` (default): open; `authenticated`: any principal; `off`: not served \
         | everyone; any role; nobody |\n"
    ));
    out.push_str(&format!("| any other path | admin | {} |\n", holders(Role::Admin)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every method of `hangar.v1`, from the descriptor set the generated code was built from.
    fn generated_methods() -> BTreeSet<String> {
        let set: prost_types::FileDescriptorSet =
            prost::Message::decode(hangar::v1::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        let mut methods = BTreeSet::new();
        for file in set.file.iter().filter(|f| f.package() == "hangar.v1") {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!("/hangar.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        methods
    }

    #[test]
    fn every_generated_method_is_in_the_table_and_nothing_else_is() {
        let generated = generated_methods();
        let table: BTreeSet<String> = METHODS.iter().map(|(path, _)| path.to_string()).collect();
        assert!(generated.len() >= 13, "the descriptor set lists too few methods: {generated:?}");
        let missing: Vec<_> = generated.difference(&table).collect();
        assert!(missing.is_empty(), "methods of hangar.v1 with no entry in auth::table::METHODS: {missing:?}");
        let stale: Vec<_> = table.difference(&generated).collect();
        assert!(stale.is_empty(), "auth::table::METHODS names methods hangar.v1 does not have: {stale:?}");
        assert_eq!(table.len(), METHODS.len(), "a method is in the table twice");
    }

    #[test]
    fn the_roles_reach_what_the_issue_says() {
        let may = |role: Role, path: &str| match access(path, Reflection::Open) {
            Access::Open | Access::Authenticated => true,
            Access::Least(least) => role.includes(least),
        };
        let reads = [
            "/hangar.v1.NodeService/ListNodes",
            "/hangar.v1.NodeService/GetNode",
            "/hangar.v1.NodeService/WatchNodes",
            "/hangar.v1.BackendService/ListBackends",
            "/hangar.v1.BackendService/GetBackend",
            "/hangar.v1.BackendService/WatchBackend",
            "/hangar.v1.BackendService/WatchBackends",
        ];
        let client = ["/hangar.v1.BackendService/Connect", "/hangar.v1.BackendService/TerminateBackend"];
        let operator = ["/hangar.v1.NodeService/DrainNode", "/hangar.v1.NodeService/UndrainNode"];
        for path in reads {
            assert!(may(Role::Reader, path) && !may(Role::Drone, path) && !may(Role::Proxy, path), "{path}");
        }
        for path in client {
            assert!(!may(Role::Reader, path) && may(Role::Client, path), "{path}");
        }
        for path in operator {
            assert!(!may(Role::Client, path) && may(Role::Operator, path), "{path}");
        }
        assert!(may(Role::Drone, "/hangar.v1.DroneService/Attach"));
        assert!(!may(Role::Proxy, "/hangar.v1.DroneService/Attach"));
        assert!(!may(Role::Operator, "/hangar.v1.DroneService/Attach"));
        assert!(may(Role::Proxy, "/hangar.v1.ProxyService/LookupRoute"));
        assert!(!may(Role::Drone, "/hangar.v1.ProxyService/Attach"));
        for (path, _) in METHODS {
            assert!(may(Role::Admin, path), "{path}");
        }
    }

    #[test]
    fn health_is_open_reflection_follows_its_flag_and_unknown_paths_are_for_admins() {
        assert_eq!(access("/grpc.health.v1.Health/Check", Reflection::Off), Access::Open);
        assert_eq!(access("/grpc.health.v1.Health/Watch", Reflection::Authenticated), Access::Open);
        let reflect = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(access(reflect, Reflection::Open), Access::Open);
        assert_eq!(access(reflect, Reflection::Authenticated), Access::Authenticated);
        assert_eq!(access(reflect, Reflection::Off), Access::Least(Role::Admin));
        let alpha = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
        assert_eq!(access(alpha, Reflection::Authenticated), Access::Authenticated);
        for path in ["/hangar.v1.NodeService/DeleteEverything", "/x", "", "/grpc.health.v1.Healthy/Check"] {
            assert_eq!(access(path, Reflection::Open), Access::Least(Role::Admin), "{path:?}");
        }
    }

    /// The roles table in `docs/security.md` is this table's rendering; when they differ this
    /// prints what the docs should hold.
    #[test]
    fn docs_show_exactly_this_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md");
        let docs = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let (start, end) = ("<!-- roles-table:start -->\n", "<!-- roles-table:end -->");
        let block = docs
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(block, _)| block)
            .unwrap_or_else(|| panic!("{} has no {start:?} … {end:?} block", path.display()));
        let expected = markdown();
        assert!(
            block == expected,
            "the roles table in {} differs from auth::table; between the markers it should read:\n\n{expected}",
            path.display()
        );
    }
}
