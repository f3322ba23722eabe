//! Images built from a local executable with nothing pulled (what dev's `hangar-demo` is): built
//! once per content, rebuilt when the executable changes, the replaced image removed, and the
//! result runs.

use std::time::Duration;

use hangar_executor::runtime::docker::{DockerOptions, ExecutableImage, ImageOutcome};
use hangar_executor::runtime::{BackendSpec, PullPolicy, Runtime};
use hangar_executor::testing::{
    ContainerCleanup, docker_or_skip_with, test_backend_binary, unique_name, wait_for_http,
};

fn docker(args: &[&str]) -> String {
    let output = std::process::Command::new("docker").args(args).output().expect("run the docker CLI");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executable_image_is_built_once_per_content_and_runs() {
    let instance = unique_name("local-image");
    let options = DockerOptions { instance: instance.clone(), ..Default::default() };
    let Some(runtime) = docker_or_skip_with("an_executable_image_is_built_once_per_content_and_runs", options).await
    else {
        return;
    };
    let _cleanup = ContainerCleanup::new(&instance);
    let binary = tokio::task::spawn_blocking(test_backend_binary).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let executable = dir.path().join("hangar-test-backend");
    std::fs::copy(binary, &executable).unwrap();
    let name = unique_name("hangar-local-image-test");
    let label = format!("hangar.test-digest.{name}");
    let image = ExecutableImage {
        reference: format!("{name}:latest"),
        executable: executable.clone(),
        args: vec![],
        digest_label: label.clone(),
    };
    struct RemoveImage(String);
    impl Drop for RemoveImage {
        fn drop(&mut self) {
            docker(&["rmi", "-f", &self.0]);
        }
    }
    let _remove = RemoveImage(image.reference.clone());

    let mut announced = 0;
    assert_eq!(runtime.ensure_executable_image(&image, || announced += 1).await.unwrap(), ImageOutcome::Built);
    let first = docker(&["image", "inspect", "--format", "{{.Id}}", &image.reference]);
    assert!(!first.is_empty());
    assert_eq!(runtime.ensure_executable_image(&image, || announced += 1).await.unwrap(), ImageOutcome::UpToDate);
    assert_eq!(announced, 1, "only a build is announced");

    // A rebuilt executable (here: one more byte) builds it again and drops the replaced image.
    let mut bytes = std::fs::read(&executable).unwrap();
    bytes.push(0);
    std::fs::write(&executable, bytes).unwrap();
    assert_eq!(runtime.ensure_executable_image(&image, || announced += 1).await.unwrap(), ImageOutcome::Built);
    let second = docker(&["image", "inspect", "--format", "{{.Id}}", &image.reference]);
    assert_ne!(first, second);
    assert_eq!(docker(&["image", "inspect", "--format", "{{.Id}}", &first]), "", "the replaced image is removed");
    let dangling = docker(&["images", "-q", "--filter", "dangling=true", "--filter", &format!("label={label}")]);
    assert_eq!(dangling, "", "no build tags or replaced images are left behind");

    // And it runs: the executable is the entrypoint.
    runtime.prepare_image(&image.reference, PullPolicy::Never).await.expect("present locally");
    let spec =
        BackendSpec { backend_id: "bk-local-image".into(), image: image.reference.clone(), ..Default::default() };
    let started = runtime.start(spec).await.unwrap();
    let (status, _) = wait_for_http(&started.address, "/", Duration::from_secs(20)).await;
    assert_eq!(status, 200);
    runtime.remove("bk-local-image").await.unwrap();
    runtime.shutdown().await;
}
