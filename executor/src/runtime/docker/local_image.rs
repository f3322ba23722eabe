//! Images made on this host from one of its executables, with nothing pulled: a `FROM scratch`
//! image whose root file system holds the executable and the shared libraries it links (the
//! dynamic loader included, at their absolute paths), built through the engine's API with the
//! classic builder. `hangar-server dev` makes its demo backend image this way, so a first
//! backend works on a machine that cannot reach a registry.
//!
//! The image is labelled with a digest of what went into it; an image whose label matches is
//! kept, so only a rebuilt executable (or upgraded libraries) builds it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bollard::query_parameters::{BuildImageOptions, ListImagesOptions, RemoveImageOptions, TagImageOptions};
use futures::StreamExt;

use bollard::Docker;

use super::{DockerRuntime, status_code, unavailable};
use crate::runtime::RuntimeError;

/// What to build: `executable` goes to `/<its file name>`, which is the entrypoint, followed by
/// `args`.
#[derive(Clone, Debug)]
pub struct ExecutableImage {
    /// `repository:tag` (e.g. `hangar-demo:latest`).
    pub reference: String,
    pub executable: PathBuf,
    pub args: Vec<String>,
    /// Label carrying the digest of the image's content.
    pub digest_label: String,
}

/// What [`DockerRuntime::ensure_executable_image`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageOutcome {
    /// The engine already had it for this exact content.
    UpToDate,
    Built,
}

/// One file of the image: where it goes, where it comes from.
struct ImageFile {
    in_image: String,
    host: PathBuf,
}

impl ExecutableImage {
    fn split_reference(&self) -> (&str, &str) {
        match self.reference.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, tag),
            _ => (&self.reference, "latest"),
        }
    }

    fn entrypoint(&self) -> Result<Vec<String>, RuntimeError> {
        let name =
            self.executable.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                RuntimeError::internal(format!("{} has no usable file name", self.executable.display()))
            })?;
        Ok(std::iter::once(format!("/{name}")).chain(self.args.iter().cloned()).collect())
    }

    /// The executable and every shared library the loader would map for it.
    fn files(&self) -> Result<Vec<ImageFile>, RuntimeError> {
        let entrypoint = self.entrypoint()?;
        let mut files = vec![ImageFile { in_image: entrypoint[0].clone(), host: self.executable.clone() }];
        for library in shared_libraries(&self.executable)? {
            let in_image = library.display().to_string();
            files.push(ImageFile { in_image, host: library });
        }
        Ok(files)
    }
}

/// Absolute paths of the shared libraries `executable` links, the dynamic loader included, as
/// `ldd` resolves them on this host. A static executable needs none.
fn shared_libraries(executable: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
    let output = Command::new("ldd")
        .arg(executable)
        .output()
        .map_err(|err| RuntimeError::internal(format!("cannot run ldd to find the shared libraries: {err}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if format!("{stdout}{stderr}").contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(RuntimeError::internal(format!("ldd {} failed: {}", executable.display(), stderr.trim())));
    }
    parse_ldd(&stdout)
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`
/// name files; `linux-vdso.so.1 (0x…)` is the kernel's and has none.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, RuntimeError> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(RuntimeError::internal(format!("shared library {} not found", name.trim())));
                }
                target.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') && !libraries.iter().any(|l: &PathBuf| l.as_os_str() == path) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// A digest of the image's content: every file's place and bytes, and the entrypoint. SipHash
/// with fixed keys: stable across processes, enough to tell two builds apart.
fn content_digest(files: &[(String, Vec<u8>)], entrypoint: &[String]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    files.hash(&mut hasher);
    entrypoint.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

impl DockerRuntime {
    /// Makes sure the engine has `image` for the current content of its executable, building
    /// it if not; `before_build` is called right before a build starts (to say so).
    pub async fn ensure_executable_image(
        &self,
        image: &ExecutableImage,
        before_build: impl FnOnce(),
    ) -> Result<ImageOutcome, RuntimeError> {
        ensure_executable_image(&self.docker, image, before_build).await
    }
}

/// [`DockerRuntime::ensure_executable_image`] on an engine client of its own (for the runtime's
/// background tasks).
pub(super) async fn ensure_executable_image(
    docker: &Docker,
    image: &ExecutableImage,
    before_build: impl FnOnce(),
) -> Result<ImageOutcome, RuntimeError> {
    let entrypoint = image.entrypoint()?;
    let files = image
        .files()?
        .into_iter()
        .map(|file| {
            let bytes = std::fs::read(&file.host)
                .map_err(|err| RuntimeError::internal(format!("cannot read {}: {err}", file.host.display())))?;
            Ok((file.in_image, bytes))
        })
        .collect::<Result<Vec<_>, RuntimeError>>()?;
    let digest = content_digest(&files, &entrypoint);
    let existing = match docker.inspect_image(&image.reference).await {
        Ok(existing) => Some(existing),
        Err(err) if status_code(&err) == Some(404) => None,
        Err(err) => return Err(unavailable(err)),
    };
    let labels = existing.as_ref().and_then(|i| i.config.as_ref()).and_then(|c| c.labels.as_ref());
    if labels.and_then(|l| l.get(&image.digest_label)) == Some(&digest) {
        return Ok(ImageOutcome::UpToDate);
    }
    before_build();

    let dockerfile = format!(
        "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT {}\n",
        // The JSON form: there is no shell in the image.
        json_array(&entrypoint)
    );
    let mut archive = TarArchive::default();
    archive.add("Dockerfile", dockerfile.as_bytes(), 0o644);
    for (in_image, bytes) in &files {
        // Executable bits on the libraries too: the loader is run by the kernel.
        archive.add(&format!("rootfs{in_image}"), bytes, 0o755);
    }
    let (repository, tag) = image.split_reference();
    // Built under a tag of its own, then moved onto the real one (atomic), so two builds at
    // once (two dev servers starting together) never leave a half-made image under it.
    let build_tag = format!("{repository}:build-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let options = BuildImageOptions {
        t: Some(build_tag.clone()),
        labels: Some(HashMap::from([(image.digest_label.clone(), digest)])),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    let mut build = docker.build_image(options, None, Some(bollard::body_full(archive.finish().into())));
    while let Some(item) = build.next().await {
        match item {
            Ok(_) => {}
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(RuntimeError::internal(format!("building {} failed: {error}", image.reference)));
            }
            Err(err) => return Err(unavailable(err)),
        }
    }
    let tag_options = TagImageOptions { repo: Some(repository.to_string()), tag: Some(tag.to_string()) };
    docker.tag_image(&build_tag, Some(tag_options)).await.map_err(unavailable)?;
    // Only the build tag goes; the image keeps its real one.
    let _ = docker.remove_image(&build_tag, None::<RemoveImageOptions>, None).await;
    remove_replaced_images(docker, &image.digest_label).await;
    Ok(ImageOutcome::Built)
}

/// Earlier builds that lost their tag (to this build, or to one before it whose container
/// still ran then), so rebuilding the executable does not pile up images. The engine
/// refuses to remove an image a container still uses; that one stays for a later build.
async fn remove_replaced_images(docker: &Docker, digest_label: &str) {
    let filters = HashMap::from([
        ("dangling".to_string(), vec!["true".to_string()]),
        ("label".to_string(), vec![digest_label.to_string()]),
    ]);
    let options = ListImagesOptions { filters: Some(filters), ..Default::default() };
    let Ok(images) = docker.list_images(Some(options)).await else { return };
    for image in images {
        if let Err(err) = docker.remove_image(&image.id, None::<RemoveImageOptions>, None).await {
            tracing::debug!(image = image.id, %err, "a replaced image stays (still in use)");
        }
    }
}

/// `["/a", "b"]`, each element a JSON string.
fn json_array(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| {
            let mut out = String::from("\"");
            for c in item.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        })
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// A POSIX ustar archive in memory: regular files only (the engine makes parent directories).
#[derive(Default)]
struct TarArchive {
    bytes: Vec<u8>,
}

impl TarArchive {
    fn add(&mut self, path: &str, content: &[u8], mode: u32) {
        let mut header = [0u8; 512];
        let (prefix, name) = split_tar_path(path);
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], mode as u64);
        octal(&mut header[108..116], 0); // uid
        octal(&mut header[116..124], 0); // gid
        octal(&mut header[124..136], content.len() as u64);
        octal(&mut header[136..148], 0); // mtime: fixed, so the same content builds the same layer
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is taken with its own field read as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
        octal(&mut header[148..155], sum);
        header[155] = b' ';
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(content);
        self.bytes.resize(self.bytes.len().next_multiple_of(512), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self.bytes
    }
}

/// ustar keeps up to 155 bytes of directories in `prefix` and 100 of the rest in `name`.
fn split_tar_path(path: &str) -> (&str, &str) {
    if path.len() <= 100 {
        return ("", path);
    }
    let split = path
        .match_indices('/')
        .map(|(i, _)| i)
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100)
        .unwrap_or_else(|| panic!("path too long for a tar header: {path}"));
    (&path[..split], &path[split + 1..])
}

/// A zero-padded octal number filling `field` but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_libraries_and_the_loader() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f60)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f60)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f60)\n";
        let libraries = parse_ldd(output).unwrap();
        assert_eq!(
            libraries,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibmissing.so => not found\n").is_err());
    }

    #[test]
    fn the_running_test_binary_resolves_its_libraries() {
        let exe = std::env::current_exe().unwrap();
        let libraries = shared_libraries(&exe).unwrap();
        assert!(libraries.iter().all(|l| l.is_absolute() && l.exists()), "{libraries:?}");
    }

    #[test]
    fn tar_headers_carry_size_mode_and_a_valid_checksum() {
        let mut archive = TarArchive::default();
        archive.add("rootfs/lib/x.so", b"hello", 0o755);
        let bytes = archive.finish();
        assert_eq!(bytes.len(), 512 + 512 + 1024);
        let header = &bytes[..512];
        assert_eq!(&header[..15], b"rootfs/lib/x.so");
        assert_eq!(&header[100..108], b"0000755\0");
        assert_eq!(&header[124..136], b"00000000005\0");
        let mut blank = header.to_vec();
        blank[148..156].copy_from_slice(b"        ");
        let sum: u64 = blank.iter().map(|&b| u64::from(b)).sum();
        let stored = u64::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
        assert_eq!(stored, sum);
        assert_eq!(&bytes[512..517], b"hello");
    }

    #[test]
    fn long_paths_use_the_prefix_field() {
        let path = format!("rootfs/{}/file", "d".repeat(120));
        let (prefix, name) = split_tar_path(&path);
        assert_eq!(format!("{prefix}/{name}"), path);
        assert!(prefix.len() <= 155 && name.len() <= 100);
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        let image = |reference: &str| ExecutableImage {
            reference: reference.into(),
            executable: "/bin/x".into(),
            args: vec!["serve".into()],
            digest_label: "l".into(),
        };
        assert_eq!(image("hangar-demo:latest").split_reference(), ("hangar-demo", "latest"));
        assert_eq!(image("hangar-demo").split_reference(), ("hangar-demo", "latest"));
        assert_eq!(image("localhost:5000/demo").split_reference(), ("localhost:5000/demo", "latest"));
        assert_eq!(image("hangar-demo").entrypoint().unwrap(), ["/x", "serve"]);
        assert_eq!(json_array(&["/x".into(), "a \"b\"".into()]), r#"["/x", "a \"b\""]"#);
    }
}
