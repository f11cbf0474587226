;; big_memory.wat — test fixture for memory limits: an echo agent whose
;; memory has a minimum of 1000 pages (1000 x 64 KiB = 62.5 MiB), so a host
;; with a smaller per-agent memory limit must refuse to instantiate it.
(module
  (memory (export "memory") 1000)

  ;; Fixed allocator: the content always goes at offset 1024 (0 if it
  ;; does not fit in the one page).
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
