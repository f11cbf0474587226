;; echo.wat — Caxton example agent (ABI version 1).
;;
;; Replies to every message with its content, unchanged.
;;
;; Memory layout: bytes [0, 1024) are reserved for static data (unused
;; here); the heap starts at 1024. The allocator is a bump allocator that
;; resets on every caxton_alloc call: the host calls caxton_alloc exactly
;; once per message (for the input) and copies the previous reply out
;; before it does, so nothing older than the current message is live.
(module
  (memory (export "memory") 1)

  (global $heap (mut i32) (i32.const 1024))

  ;; Reserve $len bytes at the heap pointer, growing memory if needed.
  ;; Returns 0 if memory cannot grow far enough.
  (func $bump (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $have i64)
    (local.set $ptr (global.get $heap))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr))
                             (i64.extend_i32_u (local.get $len))))
    ;; the heap pointer must stay representable as an i32
    (if (i64.ge_u (local.get $end) (i64.const 0x100000000))
      (then (return (i32.const 0))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        ;; grow by the missing number of 64 KiB pages (rounded up)
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have))
                                      (i64.const 0xFFFF))
                             (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))

  ;; caxton_alloc(len) -> ptr: the host writes the message content here.
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (global.set $heap (i32.const 1024))
    (call $bump (local.get $len)))

  ;; caxton_init() -> 0: nothing to set up; 0 means "started fine".
  (func (export "caxton_init") (result i32)
    (i32.const 0))

  ;; caxton_handle(ptr, len) -> (ptr << 32) | len
  ;; The reply is the input region itself.
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
