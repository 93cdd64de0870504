{
  description = "ftkit: small Unix filters that turn documents and dataset catalogs into fine-tuning data and LoRA adapters";

  # Every input is pinned to an exact revision in its URL, so the flake evaluates the same way before a
  # flake.lock exists (`nix flake lock` writes one; see README.md, "Install with Nix").
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/531670d871c0e29724a02f3cbcac170adc65b58c"; # nixos-26.05
    crane.url = "github:ipetkov/crane/2c71e194474d13de031d729b729c968ddbe3507f";
    flake-utils.url = "github:numtide/flake-utils/11707dc2f618dd54ca8739b309ec4fc024de578b";
    rust-overlay = {
      url = "github:oxalica/rust-overlay/fd2ebb9cc4323d0c5a1336138dab5c3c5a5d8bd9";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
      flake-utils,
      rust-overlay,
      ...
    }:
    flake-utils.lib.eachSystem [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ] (
      system:
      let
        pkgs = import nixpkgs {
          inherit system;
          overlays = [ (import rust-overlay) ];
        };
        inherit (pkgs) lib;

        # The toolchain of rust-toolchain.toml, the file rustup reads too.
        craneLib = (crane.mkLib pkgs).overrideToolchain (
          p: p.rust-bin.fromRustupToolchainFile ./rust-toolchain.toml
        );

        # Tool name (flake attribute, `nix run .#chunk`) → package and binary `ft-<name>`.
        tools = [
          "catalog-to-manifest"
          "chunk"
          "describe"
          "fetch"
          "filter"
          "generate"
          "ingest"
          "merge-export"
          "qa-synth"
          "score"
          "split"
          "to-alpaca"
          "train-lora"
        ];
        # Tools that run models: the only ones with a CUDA variant (STYLE.md: CUDA only for model tools).
        modelTools = [ "train-lora" ];

        # Sources plus what the tests read: golden files in testdata/ and the man pages they compare.
        src = lib.fileset.toSource {
          root = ./.;
          fileset = lib.fileset.unions [
            (craneLib.fileset.commonCargoSources ./.)
            ./testdata
            ./man
          ];
        };

        commonArgs = {
          inherit src;
          pname = "ftkit";
          version = "0.1.0";
          strictDeps = true;
          cargoExtraArgs = "--locked --workspace";
          nativeBuildInputs = [ pkgs.pkg-config ];
          buildInputs = lib.optionals pkgs.stdenv.isDarwin [ pkgs.libiconv ];
        };
        cargoArtifacts = craneLib.buildDepsOnly commonArgs;

        # One workspace build; each tool's package is a thin view of it (building per package would
        # re-resolve features and compile candle again for each model tool).
        ftkit = craneLib.buildPackage (
          commonArgs
          // {
            inherit cargoArtifacts;
            doCheck = false;
            postInstall = ''
              install -Dm644 -t $out/share/man/man1 man/*.1
              install -Dm644 -t $out/share/man/man7 man/ftkit.7
            '';
          }
        );

        toolPackage =
          name: drv:
          pkgs.runCommand "ft-${name}" { meta.mainProgram = "ft-${name}"; } ''
            mkdir -p $out/bin $out/share/man/man1
            ln -s ${drv}/bin/ft-${name} $out/bin/ft-${name}
            ln -s ${drv}/share/man/man1/ft-${name}.1 $out/share/man/man1/ft-${name}.1
          '';

        # CUDA builds of the model tools (Linux only): nixpkgs' CUDA is unfree, so a separate package set.
        cudaPkgs = import nixpkgs {
          inherit system;
          overlays = [ (import rust-overlay) ];
          config = {
            allowUnfree = true;
            cudaSupport = true;
          };
        };
        cudaCraneLib = (crane.mkLib cudaPkgs).overrideToolchain (
          p: p.rust-bin.fromRustupToolchainFile ./rust-toolchain.toml
        );
        cuda = cudaPkgs.cudaPackages;
        cudaToolPackage =
          name:
          cudaCraneLib.buildPackage (
            commonArgs
            // {
              pname = "ft-${name}-cuda";
              cargoExtraArgs = "--locked -p ft-${name} --features cuda";
              doCheck = false;
              # candle-kernels compiles its PTX with nvcc for this compute capability (90 = H100/H200);
              # override with `.overrideAttrs { CUDA_COMPUTE_CAP = "80"; }` for an A100.
              CUDA_COMPUTE_CAP = "90";
              CUDA_ROOT = "${cuda.cuda_nvcc}";
              nativeBuildInputs = commonArgs.nativeBuildInputs ++ [
                cuda.cuda_nvcc
                # Adds /run/opengl-driver/lib to the binaries' run path: the NVIDIA driver's libcuda.so.1
                # is found there on NixOS (elsewhere run through nixGL or set LD_LIBRARY_PATH).
                cudaPkgs.autoAddDriverRunpath
              ];
              buildInputs = [
                cuda.cuda_cudart
                cuda.cuda_nvrtc
                cuda.libcublas
                cuda.libcurand
              ];
              # Link against the stub driver library; the real one is the driver's, found at run time.
              LIBRARY_PATH = "${lib.getLib cuda.cuda_cudart}/lib/stubs";
              postInstall = ''
                install -Dm644 -t $out/share/man/man1 man/ft-${name}.1
              '';
            }
          );
        isLinux = pkgs.stdenv.isLinux;

        toolPackages = lib.genAttrs tools (name: toolPackage name ftkit);
        cudaPackages = lib.optionalAttrs isLinux (
          lib.listToAttrs (
            map (name: lib.nameValuePair "${name}-cuda" (cudaToolPackage name)) modelTools
          )
        );
        app = name: drv: {
          type = "app";
          program = "${drv}/bin/ft-${lib.removeSuffix "-cuda" name}";
        };
      in
      {
        packages = toolPackages // cudaPackages // { default = ftkit; };

        apps = lib.mapAttrs app (toolPackages // cudaPackages);

        # `nix flake check`: the whole test suite (README's test command), clippy and formatting.
        checks = {
          inherit ftkit;
          # The tests run real binaries beside ours: git (ft-fetch's git sources), flock (cron-example).
          tests = craneLib.cargoTest (
            commonArgs
            // {
              inherit cargoArtifacts;
              nativeBuildInputs =
                commonArgs.nativeBuildInputs ++ [ pkgs.git ] ++ lib.optional isLinux pkgs.util-linux;
            }
          );
          clippy = craneLib.cargoClippy (
            commonArgs
            // {
              inherit cargoArtifacts;
              cargoClippyExtraArgs = "--all-targets -- --deny warnings";
            }
          );
          fmt = craneLib.cargoFmt { inherit src; };
        };

        devShells =
          {
            default = craneLib.devShell {
              checks = self.checks.${system};
              packages = [
                pkgs.zstd
                pkgs.python3
              ];
            };
          }
          // lib.optionalAttrs isLinux {
            # scripts/build-cuda and scripts/check-cuda without NVIDIA's Python wheels.
            cuda = cudaCraneLib.devShell {
              packages = [
                cuda.cuda_nvcc
                cuda.cuda_cudart
                cuda.cuda_nvrtc
                cuda.libcublas
                cuda.libcurand
              ];
              CUDA_COMPUTE_CAP = "90";
              CUDA_ROOT = "${cuda.cuda_nvcc}";
              LIBRARY_PATH = "${lib.getLib cuda.cuda_cudart}/lib/stubs";
              shellHook = ''
                export LD_LIBRARY_PATH=/run/opengl-driver/lib''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
              '';
            };
          };
      }
    );
}
