//! The container image and `scripts/cluster`, for tests: [`Image`] builds `hangar:test-…` with
//! `scripts/image --debug --no-build` from the binaries already built (no cargo run, no release
//! build), [`Cluster`] runs `scripts/cluster up` and reads `scripts/cluster env`; both remove what
//! they made when dropped, also when the test fails. A fault suite drives the same cluster: its
//! containers are `hangar-NAME-NODE`, and [`Cluster::netns`] runs a host command (iptables, `ip`)
//! in a node's network namespace.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root, where `scripts/` lives.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The cargo target directory the running test binary was built in (`target/<profile>/deps/…`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().nth(3).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Runs the docker CLI and returns its stdout, trimmed; panics with its stderr if it fails.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("run the docker CLI");
    assert!(output.status.success(), "docker {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Runs a script of `scripts/` from the repository root, its output passed through to the test's
/// (so a failed `up` shows why), and returns its output.
fn script(name: &str, args: &[&str]) -> Output {
    let output = Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap_or_else(|err| panic!("cannot run scripts/{name}: {err}"));
    eprint!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    output
}

/// An image built by `scripts/image --debug --no-build --tag hangar:test-…`, removed on drop.
pub struct Image {
    pub tag: String,
}

impl Image {
    /// Builds the image from this target directory's debug binaries (`cargo build --workspace
    /// --bins` must have run, as scripts/test does).
    pub fn build(prefix: &str) -> Image {
        let tag = format!("hangar:test-{prefix}-{:08x}", rand_u32());
        let image = Image { tag };
        let output = script("image", &["--debug", "--no-build", "--tag", &image.tag]);
        assert!(output.status.success(), "scripts/image failed (output above)");
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.tag]).output();
    }
}

/// A cluster started with `scripts/cluster up --name NAME --image TAG`; `scripts/cluster down`
/// when dropped, whether `up` finished or not.
pub struct Cluster {
    pub name: String,
    env: HashMap<String, String>,
    removed: bool,
}

impl Cluster {
    /// Starts the cluster and waits (in the script) until its five nodes are READY; panics with
    /// the script's output if they are not within `timeout_secs`. `env` is passed to the script
    /// (e.g. `HANGAR_CLUSTER_CONTROLLER_ARGS`).
    pub fn up(prefix: &str, image: &Image, timeout_secs: u32, env: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster { name: format!("{prefix}-{:08x}", rand_u32()), env: HashMap::new(), removed: false };
        let timeout = timeout_secs.to_string();
        let mut command = Command::new(repo_root().join("scripts/cluster"));
        command.args(["up", "--name", &cluster.name, "--image", &image.tag, "--timeout", &timeout]);
        command.current_dir(repo_root()).envs(env.iter().copied());
        let output = command.output().expect("run scripts/cluster");
        eprint!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "scripts/cluster up failed (output above)");
        let listed = cluster.script(&["env"]);
        assert!(listed.status.success(), "scripts/cluster env failed");
        cluster.env = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.trim_matches('"').to_string()))
            .collect();
        cluster
    }

    /// `scripts/cluster CMD --name NAME ARGS…`.
    pub fn script(&self, args: &[&str]) -> Output {
        let (command, rest) = args.split_first().expect("a scripts/cluster command");
        let mut all = vec![*command, "--name", &self.name];
        all.extend_from_slice(rest);
        script("cluster", &all)
    }

    /// A value of `scripts/cluster env`, e.g. `HANGAR_CLUSTER_CONTROLLERS`.
    pub fn env(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("scripts/cluster env has no {key}: {:?}", self.env))
    }

    /// The controllers' gRPC URLs, ctl-1 first.
    pub fn controllers(&self) -> Vec<String> {
        self.env("HANGAR_CLUSTER_CONTROLLERS").split(',').map(String::from).collect()
    }

    /// The address of a node (`ctl-1`, `drone-2`, `proxy-1`, `postgres`) on the cluster network.
    pub fn ip(&self, node: &str) -> &str {
        self.env(&format!("HANGAR_CLUSTER_{}_IP", node.to_uppercase().replace('-', "_")))
    }

    /// The container of a node: `hangar-NAME-NODE`.
    pub fn container(&self, node: &str) -> String {
        format!("hangar-{}-{node}", self.name)
    }

    /// Runs a host command in a node's network namespace (`scripts/cluster netns`, nsenter; needs
    /// root), e.g. `iptables -A INPUT -s IP -j DROP` to cut a link.
    pub fn netns(&self, node: &str, command: &[&str]) -> Output {
        let mut args = vec!["netns", node, "--"];
        args.extend_from_slice(command);
        self.script(&args)
    }
}

impl Cluster {
    /// `scripts/cluster down` now, panicking if it fails (the drop only reports a failure).
    pub fn down(mut self) {
        self.removed = true;
        assert!(self.script(&["down"]).status.success(), "scripts/cluster down failed (output above)");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let output = self.script(&["down"]);
        if !output.status.success() {
            eprintln!("scripts/cluster down --name {} failed; remove it by hand (output above)", self.name);
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // Unique enough for names: a randomly keyed hash of the time and the process.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}
