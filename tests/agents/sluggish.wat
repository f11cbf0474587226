;; sluggish.wat — test fixture for rollouts: a v2 that is slow on every
;; message. Replies "v2:" followed by the content, like version2.wat, after
;; busy-waiting 25 ms of caxton.now_ms(). now_ms() is truncated to whole
;; milliseconds, so the wait runs until it has advanced by more than 25: at
;; least 25 ms of real time, whatever fraction of a millisecond it started in.
(module
  (import "caxton" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)

  (data (i32.const 16) "v2:")  ;; 3 bytes

  ;; Bump allocator: static data lives below 1024, the heap starts there
  ;; and is reset by every caxton_alloc call (once per message).
  (global $heap (mut i32) (i32.const 1024))

  (func $bump (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $have i64)
    (local.set $ptr (global.get $heap))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr))
                             (i64.extend_i32_u (local.get $len))))
    (if (i64.ge_u (local.get $end) (i64.const 0x100000000))
      (then (return (i32.const 0))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
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

  (func (export "caxton_alloc") (param $len i32) (result i32)
    (global.set $heap (i32.const 1024))
    (call $bump (local.get $len)))

  ;; copy n bytes from src to dst (regions do not overlap)
  (func $copy (param $dst i32) (param $src i32) (param $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32) (local $start i64)
    (local.set $start (call $now_ms))
    (block $waited
      (loop $spin
        (br_if $waited (i64.gt_s (i64.sub (call $now_ms) (local.get $start)) (i64.const 25)))
        (br $spin)))
    (local.set $out (call $bump (i32.add (local.get $len) (i32.const 3))))
    (if (i32.eqz (local.get $out)) (then (return (i64.const 0))))
    (call $copy (local.get $out) (i32.const 16) (i32.const 3))
    (call $copy (i32.add (local.get $out) (i32.const 3)) (local.get $ptr) (local.get $len))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
      (i64.extend_i32_u (i32.add (local.get $len) (i32.const 3)))))
)
