{
  "variables": {
    # node-gyp rebuild -- -Dcordon_asan=1 builds with AddressSanitizer.
    "cordon_asan%": 0
  },
  "targets": [
    {
      "target_name": "cordon",
      "sources": [
        "src/addon.c",
        "src/cache.c",
        "src/context.c",
        "src/function.c",
        "src/isolate.c",
        "src/module.c",
        "src/promise.c",
        "src/runner.c",
        "src/value.c",
        "src/watchdog.c",
        "src/engine/context.cc",
        "src/engine/import.cc",
        "src/engine/isolate.cc",
        "src/engine/promise.cc",
        "src/engine/value.cc",
        "src/engine/wasm.cc"
      ],
      "include_dirs": ["src"],
      "defines": ["_GNU_SOURCE"],
      "cflags_c": ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc": ["-Wall", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions"],
      "conditions": [
        ["cordon_asan==1", {
          "cflags": ["-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-O1"],
          "cflags!": ["-O3"],
          "ldflags": ["-fsanitize=address"]
        }]
      ]
    }
  ]
}
