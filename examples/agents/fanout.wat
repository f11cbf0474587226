;; fanout.wat — Caxton example agent (ABI version 1): one message in, one
;; message out to each of several agents.
;;
;; - A message from outside (hop count 0 in message_info) whose content is
;;   a comma-separated list of agent names ("echo, counter,uppercase";
;;   spaces around names are ignored, empty entries skipped): fanout sends
;;   "hello from fanout" to each with caxton.send and replies "sent N", N
;;   being the sends the runtime accepted. A send refused on the spot (past
;;   the send budget, a name too long) is logged at warn level as "not
;;   sent to NAME: CODE".
;; - The receivers' replies come back as INFORM messages: fanout does not
;;   answer them. A FAILURE (unknown agent, denied, inbox full, ...) is
;;   logged at warn level and not answered either.
;;
;; Try it:
;;   caxton deploy fanout examples/agents/fanout.wat
;;   caxton send fanout "echo,counter,nobody" --conversation hello
;;                                         # -> sent 3
;;   caxton trace hello --content          # 3 requests, 2 replies, 1 FAILURE
;;   caxton logs fanout                    # unknown-agent: nobody
(module
  (import "caxton" "log"          (func $log (param i32 i32 i32)))
  (import "caxton" "send"         (func $send (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "message_info" (func $message_info (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) "hello from fanout")          ;; 17 bytes
  (data (i32.const 40) "sent ")                      ;; 5 bytes
  (data (i32.const 48) "not sent to ")               ;; 12 bytes
  (data (i32.const 64) ": ")                         ;; 2 bytes
  (data (i32.const 96) "\"performative\":\"failure\"") ;; 24 bytes
  (data (i32.const 128) "\"hops\":")                 ;; 7 bytes

  ;; Bump allocator, reset on every caxton_alloc (once per message).
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

  ;; (ptr << 32) | len
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; Copy [src, src+len) to dst; returns dst + len.
  (func $copy (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (block $done
      (loop $byte
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $len (i32.sub (local.get $len) (i32.const 1)))
        (br $byte)))
    (local.get $dst))

  ;; Offset of the first [needle, needle+needle_len) in [hay, hay+hay_len), or -1.
  (func $find (param $hay i32) (param $hay_len i32) (param $needle i32) (param $needle_len i32)
              (result i32)
    (local $i i32) (local $j i32)
    (block $none
      (loop $at
        (br_if $none (i32.gt_u (i32.add (local.get $i) (local.get $needle_len)) (local.get $hay_len)))
        (local.set $j (i32.const 0))
        (block $differs
          (loop $byte
            (if (i32.eq (local.get $j) (local.get $needle_len)) (then (return (local.get $i))))
            (br_if $differs
              (i32.ne (i32.load8_u (i32.add (local.get $hay) (i32.add (local.get $i) (local.get $j))))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $byte)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $at)))
    (i32.const -1))

  ;; Write $n (unsigned) in decimal at dst; returns the end. At most 10 bytes.
  (func $write_uint (param $dst i32) (param $n i32) (result i32)
    (local $digits i32) (local $m i32) (local $p i32)
    (local.set $m (local.get $n))
    (loop $count
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (local.set $m (i32.div_u (local.get $m) (i32.const 10)))
      (br_if $count (local.get $m)))
    (local.set $p (i32.add (local.get $dst) (local.get $digits)))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 0x30) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (i32.add (local.get $dst) (local.get $digits)))

  ;; Write $n (signed) in decimal at dst; returns the end. At most 11 bytes.
  (func $write_int (param $dst i32) (param $n i32) (result i32)
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then
        (i32.store8 (local.get $dst) (i32.const 0x2D))  ;; '-'
        (return (call $write_uint (i32.add (local.get $dst) (i32.const 1))
                                  (i32.sub (i32.const 0) (local.get $n))))))
    (call $write_uint (local.get $dst) (local.get $n)))

  ;; The envelope of the message being handled (message_info's JSON).
  (global $info (mut i32) (i32.const 0))
  (global $info_len (mut i32) (i32.const 0))

  ;; Read the envelope into the heap; 0 if that failed.
  (func $read_info (result i32)
    (local $n i32)
    ;; a zero-length buffer: message_info writes nothing and says how much it needs
    (local.set $n (call $message_info (i32.const 0) (i32.const 0)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (global.set $info (call $bump (local.get $n)))
    (if (i32.eqz (global.get $info)) (then (return (i32.const 0))))
    (global.set $info_len (call $message_info (global.get $info) (local.get $n)))
    (i32.le_s (global.get $info_len) (local.get $n)))

  ;; 1 if the envelope holds these bytes. Inside a JSON string every quote
  ;; is escaped, so '"performative":"failure"' can only be that field.
  (func $info_has (param $lit i32) (param $len i32) (result i32)
    (i32.ge_s (call $find (global.get $info) (global.get $info_len) (local.get $lit) (local.get $len))
              (i32.const 0)))

  ;; The envelope's hop count: 0 for a message from outside (or if missing).
  (func $hops (result i32)
    (local $at i32) (local $p i32) (local $end i32) (local $c i32) (local $n i32)
    (local.set $at (call $find (global.get $info) (global.get $info_len) (i32.const 128) (i32.const 7)))
    (if (i32.lt_s (local.get $at) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $p (i32.add (global.get $info) (i32.add (local.get $at) (i32.const 7))))
    (local.set $end (i32.add (global.get $info) (global.get $info_len)))
    (block $done
      (loop $digit
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 0x30)))
        (br_if $done (i32.ge_u (local.get $c) (i32.const 10)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (local.get $c)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (local.get $n))

  ;; Log "not sent to NAME: CODE" at warn level.
  (func $log_refused (param $name i32) (param $name_len i32) (param $code i32)
    (local $line i32) (local $end i32)
    (local.set $line (call $bump (i32.add (local.get $name_len) (i32.const 25))))
    (if (i32.eqz (local.get $line)) (then (return)))
    (local.set $end (call $copy (local.get $line) (i32.const 48) (i32.const 12)))
    (local.set $end (call $copy (local.get $end) (local.get $name) (local.get $name_len)))
    (local.set $end (call $copy (local.get $end) (i32.const 64) (i32.const 2)))
    (local.set $end (call $write_int (local.get $end) (local.get $code)))
    (call $log (i32.const 2) (local.get $line) (i32.sub (local.get $end) (local.get $line))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32) (local $end i32) (local $start i32) (local $stop i32) (local $code i32)
    (local $sent i32) (local $out i32) (local $out_end i32)
    (if (i32.eqz (call $read_info)) (then (return (i64.const 0))))
    (if (call $info_has (i32.const 96) (i32.const 24))
      (then
        (call $log (i32.const 2) (local.get $ptr) (local.get $len))
        (return (i64.const 0))))
    ;; a reply from one of the receivers: nothing to say back
    (if (call $hops) (then (return (i64.const 0))))
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $names_done
      (loop $name
        ;; one entry: up to the next comma or the end
        (local.set $start (local.get $p))
        (block $found_end
          (loop $scan
            (br_if $found_end (i32.ge_u (local.get $p) (local.get $end)))
            (br_if $found_end (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x2C)))  ;; ','
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br $scan)))
        (local.set $stop (local.get $p))
        ;; trim spaces on both sides
        (block $trimmed_left
          (loop $left
            (br_if $trimmed_left (i32.ge_u (local.get $start) (local.get $stop)))
            (br_if $trimmed_left (i32.ne (i32.load8_u (local.get $start)) (i32.const 0x20)))
            (local.set $start (i32.add (local.get $start) (i32.const 1)))
            (br $left)))
        (block $trimmed_right
          (loop $right
            (br_if $trimmed_right (i32.ge_u (local.get $start) (local.get $stop)))
            (br_if $trimmed_right
              (i32.ne (i32.load8_u (i32.sub (local.get $stop) (i32.const 1))) (i32.const 0x20)))
            (local.set $stop (i32.sub (local.get $stop) (i32.const 1)))
            (br $right)))
        (if (i32.gt_u (local.get $stop) (local.get $start))
          (then
            (local.set $code (call $send (local.get $start) (i32.sub (local.get $stop) (local.get $start))
                                         (i32.const 16) (i32.const 17)))
            (if (i32.eqz (local.get $code))
              (then (local.set $sent (i32.add (local.get $sent) (i32.const 1))))
              (else (call $log_refused (local.get $start) (i32.sub (local.get $stop) (local.get $start))
                                       (local.get $code))))))
        (br_if $names_done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))  ;; past the comma
        (br $name)))
    ;; "sent N"
    (local.set $out (call $bump (i32.const 15)))
    (if (i32.eqz (local.get $out)) (then (return (i64.const 0))))
    (local.set $out_end (call $write_uint (call $copy (local.get $out) (i32.const 40) (i32.const 5))
                                          (local.get $sent)))
    (call $pack (local.get $out) (i32.sub (local.get $out_end) (local.get $out))))
)
