;; bad_import.wat — test fixture: NOT a valid agent.
;; Otherwise a working echo agent, but it imports env.abort (the import
;; AssemblyScript emits) and wasi_snapshot_preview1.fd_write, neither of
;; which the host provides. Only imports from module "caxton" are allowed,
;; so deploying it must be rejected, naming the offending import.
(module
  (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
