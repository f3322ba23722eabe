//! Two `hangar-server dev` on one Docker engine never touch each other's backends: each drone
//! runs under an instance id of its own data dir, and reconciles only the containers labelled
//! with it. (Before, every dev drone was instance "dev", and the second to start removed the
//! first's running container as an orphan.)

use std::time::Duration;

use hangar_executor::runtime::Runtime;
use hangar_executor::runtime::docker::DockerOptions;
use hangar_executor::testing::{ContainerCleanup, docker_or_skip_with, http_get, test_image, unique_name};
use hangar_testkit::eventually;
use hangar_tests::{DevProcess, docker_available};

/// One backend of one dev server: its id, and the container that runs it.
struct Running {
    key: String,
    backend_id: String,
    container_id: String,
}

fn docker(args: &[&str]) -> String {
    let output = std::process::Command::new("docker").args(args).output().expect("run the docker CLI");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `(id, running)` of the container of `backend_id` under `instance`, if it exists.
fn container(instance: &str, backend_id: &str) -> Option<(String, bool)> {
    let name = format!("hangar-{instance}-{backend_id}");
    let out = docker(&["inspect", "--format", "{{.Id}} {{.State.Running}}", &name]);
    let (id, running) = out.split_once(' ')?;
    Some((id.to_string(), running == "true"))
}

/// Connects `key` on `dev` with the demo image and waits until it is READY.
fn connect(dev: &DevProcess, key: &str) -> Running {
    let out = dev.hangar(&["-o", "json", "connect", key, "--image", "hangar-demo", "--wait", "--timeout", "60s"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("JSON from connect: {out}"));
    assert_eq!(doc["state"], "READY", "{doc}");
    let backend_id = doc["backend_id"].as_str().unwrap().to_string();
    let (container_id, running) = container(&dev.instance(), &backend_id).expect("its container exists");
    assert!(running);
    Running { key: key.to_string(), backend_id, container_id }
}

/// The backend still runs in the same container and answers through `dev`'s proxy.
async fn still_serving(dev: &DevProcess, instance: &str, backend: &Running) {
    assert_eq!(
        container(instance, &backend.backend_id),
        Some((backend.container_id.clone(), true)),
        "the container of {} under instance {instance} still runs, the same one",
        backend.backend_id
    );
    answers(dev, backend).await;
}

/// A fresh connection URL for the backend's key answers 200 from that very backend.
async fn answers(dev: &DevProcess, backend: &Running) {
    let what = format!("backend {} answering through the proxy", backend.backend_id);
    eventually(Duration::from_secs(30), &what, async || {
        let doc: serde_json::Value =
            serde_json::from_str(&dev.hangar(&["-o", "json", "connect", &backend.key])).unwrap();
        if doc["backend_id"] != backend.backend_id.as_str() {
            return Err(format!("connect returned another backend: {doc}"));
        }
        let url = doc["url"].as_str().unwrap();
        let rest = url.strip_prefix("http://").unwrap();
        let (address, path) = rest.split_at(rest.find('/').unwrap());
        match http_get(address, path).await {
            Ok((200, body)) if body.contains(&backend.backend_id) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dev_servers_on_one_engine_keep_each_others_backends_through_restarts() {
    if !docker_available("two_dev_servers_on_one_engine_keep_each_others_backends_through_restarts").await {
        return;
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = DevProcess::start(dir_a.path(), &["--runtime", "docker"]);
    let instance_a = a.instance();
    let _cleanup_a = ContainerCleanup::new(&instance_a);
    let backend_a = connect(&a, "docs/a");

    let b = DevProcess::start(dir_b.path(), &["--runtime", "docker"]);
    let instance_b = b.instance();
    let _cleanup_b = ContainerCleanup::new(&instance_b);
    assert_ne!(instance_a, instance_b, "two data dirs, two instances");
    still_serving(&a, &instance_a, &backend_a).await;
    let backend_b = connect(&b, "docs/b");
    still_serving(&a, &instance_a, &backend_a).await;

    // The second stops and starts again: it resumes its own backend and leaves the first's be.
    b.stop();
    still_serving(&a, &instance_a, &backend_a).await;
    let b = DevProcess::start(dir_b.path(), &["--runtime", "docker"]);
    assert_eq!(b.instance(), instance_b, "the instance id is kept in the data dir");
    still_serving(&b, &instance_b, &backend_b).await;
    still_serving(&a, &instance_a, &backend_a).await;

    // And the other way round.
    a.stop();
    still_serving(&b, &instance_b, &backend_b).await;
    let a = DevProcess::start(dir_a.path(), &["--runtime", "docker"]);
    assert_eq!(a.instance(), instance_a);
    still_serving(&a, &instance_a, &backend_a).await;
    still_serving(&b, &instance_b, &backend_b).await;

    for (dev, backend) in [(&a, &backend_a), (&b, &backend_b)] {
        dev.hangar(&["backends", "terminate", &backend.backend_id, "--hard"]);
    }
}

#[tokio::test]
async fn docker_runtime_leaves_alone_a_container_labelled_for_another_instance() {
    let instance = unique_name("guard");
    let options = DockerOptions { instance: instance.clone(), ..Default::default() };
    let Some(runtime) =
        docker_or_skip_with("docker_runtime_leaves_alone_a_container_labelled_for_another_instance", options).await
    else {
        return;
    };
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let other = unique_name("other");
    let _cleanup = ContainerCleanup::new(&other);
    // Under this instance's container name, but created by (labelled for) another instance.
    let backend_id = "bk-foreign";
    let name = runtime.container_name(backend_id);
    let created = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "hangar.managed=true",
        "--label",
        &format!("hangar.executor={other}"),
        "--label",
        &format!("hangar.backend-id={backend_id}"),
        image,
    ]);
    assert!(!created.is_empty(), "docker run {name} failed");

    assert!(runtime.list().await.unwrap().is_empty(), "not listed as this instance's");
    assert!(runtime.inspect(backend_id).await.is_err(), "not inspected as this instance's");
    runtime.stop(backend_id, Duration::ZERO).await.unwrap();
    runtime.remove(backend_id).await.unwrap();
    let running = docker(&["inspect", "--format", "{{.State.Running}}", &name]);
    assert_eq!(running, "true", "stop and remove left the other instance's container running");
    runtime.shutdown().await;
}

#[test]
fn a_dev_data_dir_from_before_instance_ids_keeps_the_old_instance_name() {
    // A drone journal but no instance id: written by a dev from before instance ids, whose
    // containers are labelled "dev". They must still be found, so the name stays.
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("drone")).unwrap();
    std::fs::write(data.path().join("drone/journal.sqlite"), b"").unwrap();
    let dev = DevProcess::start(data.path(), &["--runtime", "process"]);
    assert_eq!(dev.instance(), "dev", "{}", dev.banner);
    assert_eq!(std::fs::read_to_string(data.path().join("drone/instance-id")).unwrap().trim(), "dev");
    dev.stop();

    // A fresh data dir gets an id of its own, kept across restarts.
    let fresh = tempfile::tempdir().unwrap();
    let dev = DevProcess::start(fresh.path(), &["--runtime", "process"]);
    let instance = dev.instance();
    assert!(instance.starts_with("d-") && instance.len() == 14, "{instance}");
    dev.stop();
    assert_eq!(DevProcess::start(fresh.path(), &["--runtime", "process"]).instance(), instance);
}
