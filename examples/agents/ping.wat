;; ping.wat — Caxton example agent (ABI version 1): plays N rounds of ping
;; pong with the agent named "pong" (pong.wat), in one conversation.
;;
;; - A message from outside (hop count 0 in message_info) starts a game: its
;;   content is N in decimal (10 if empty, 0 or not a number). ping sends
;;   "ping 1/N" to "pong" with caxton.send and replies "started N" (or "not
;;   started: send returned CODE").
;; - pong's reply "pong K/N" comes back to ping as an INFORM. ping replies
;;   "ping K+1/N" while K < N; the runtime carries that reply back to pong
;;   as the next message of the same conversation. At K >= N it logs
;;   "finished after N rounds" and does not reply, which ends the
;;   conversation. One game of N rounds is 2N agent-to-agent messages.
;; - A FAILURE (pong unknown, denied, inbox full, hop limit, pong failed)
;;   is logged at warn level and not answered: that game is over.
;; - Any other message from an agent is logged at warn level and not
;;   answered (answering could start a loop).
;;
;; Try it (with pong deployed too):
;;   caxton deploy pong examples/agents/pong.wat
;;   caxton deploy ping examples/agents/ping.wat
;;   caxton send ping 500 --conversation demo    # -> started 500
;;   caxton trace demo                           # the 1,000 messages, in order
;;   caxton logs ping                            # finished after 500 rounds
(module
  (import "caxton" "log"          (func $log (param i32 i32 i32)))
  (import "caxton" "send"         (func $send (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "message_info" (func $message_info (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) "pong")                          ;; 4 bytes: whom to play with
  (data (i32.const 24) "ping 1/")                       ;; 7 bytes
  (data (i32.const 32) "pong ")                         ;; 5 bytes
  (data (i32.const 40) "started ")                      ;; 8 bytes
  (data (i32.const 64) "finished after ")               ;; 15 bytes
  (data (i32.const 80) " rounds")                       ;; 7 bytes
  (data (i32.const 96) "\"performative\":\"failure\"")    ;; 24 bytes
  (data (i32.const 128) "\"hops\":")                    ;; 7 bytes
  (data (i32.const 136) "/")                            ;; 1 byte
  (data (i32.const 144) "ping ")                        ;; 5 bytes
  (data (i32.const 160) "not started: send returned ")  ;; 27 bytes

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

  ;; [ptr, ptr+len) as a decimal number of 1 to 9 digits, or -1.
  (func $parse_uint (param $ptr i32) (param $len i32) (result i32)
    (local $end i32) (local $c i32) (local $n i32)
    (if (i32.or (i32.eqz (local.get $len)) (i32.gt_u (local.get $len) (i32.const 9)))
      (then (return (i32.const -1))))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (loop $digit
      (local.set $c (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 0x30)))
      (if (i32.ge_u (local.get $c) (i32.const 10)) (then (return (i32.const -1))))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (local.get $c)))
      (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $ptr) (local.get $end))))
    (local.get $n))

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

  ;; Start a game of $n rounds (10 if $n < 1): send "ping 1/N" to pong.
  (func $start (param $n i32) (result i64)
    (local $ball i32) (local $ball_end i32) (local $code i32) (local $out i32) (local $end i32)
    (if (i32.lt_s (local.get $n) (i32.const 1)) (then (local.set $n (i32.const 10))))
    (local.set $ball (call $bump (i32.const 17)))
    (local.set $out (call $bump (i32.const 38)))
    (if (i32.or (i32.eqz (local.get $ball)) (i32.eqz (local.get $out))) (then (return (i64.const 0))))
    (local.set $ball_end (call $write_uint (call $copy (local.get $ball) (i32.const 24) (i32.const 7))
                                           (local.get $n)))
    (local.set $code (call $send (i32.const 16) (i32.const 4)
                                 (local.get $ball) (i32.sub (local.get $ball_end) (local.get $ball))))
    (if (i32.eqz (local.get $code))
      (then (local.set $end (call $write_uint (call $copy (local.get $out) (i32.const 40) (i32.const 8))
                                              (local.get $n))))
      (else (local.set $end (call $write_int (call $copy (local.get $out) (i32.const 160) (i32.const 27))
                                             (local.get $code)))))
    (call $pack (local.get $out) (i32.sub (local.get $end) (local.get $out))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $rest i32) (local $rest_len i32) (local $slash i32) (local $k i32) (local $n i32)
    (local $out i32) (local $end i32)
    (if (i32.eqz (call $read_info)) (then (return (i64.const 0))))
    (if (call $info_has (i32.const 96) (i32.const 24))
      (then
        (call $log (i32.const 2) (local.get $ptr) (local.get $len))
        (return (i64.const 0))))
    (if (i32.eqz (call $hops))
      (then (return (call $start (call $parse_uint (local.get $ptr) (local.get $len))))))
    ;; pong's answer "pong K/N"
    (block $other
      (br_if $other (i32.lt_u (local.get $len) (i32.const 5)))
      (br_if $other (i32.ne (call $find (local.get $ptr) (i32.const 5) (i32.const 32) (i32.const 5))
                            (i32.const 0)))
      (local.set $rest (i32.add (local.get $ptr) (i32.const 5)))
      (local.set $rest_len (i32.sub (local.get $len) (i32.const 5)))
      (local.set $slash (call $find (local.get $rest) (local.get $rest_len) (i32.const 136) (i32.const 1)))
      (br_if $other (i32.lt_s (local.get $slash) (i32.const 0)))
      (local.set $k (call $parse_uint (local.get $rest) (local.get $slash)))
      (local.set $n (call $parse_uint
                      (i32.add (local.get $rest) (i32.add (local.get $slash) (i32.const 1)))
                      (i32.sub (local.get $rest_len) (i32.add (local.get $slash) (i32.const 1)))))
      (br_if $other (i32.or (i32.lt_s (local.get $k) (i32.const 0)) (i32.lt_s (local.get $n) (i32.const 0))))
      (local.set $out (call $bump (i32.const 32)))
      (if (i32.eqz (local.get $out)) (then (return (i64.const 0))))
      (if (i32.ge_u (local.get $k) (local.get $n))
        (then
          ;; the last round: no reply ends the conversation
          (local.set $end (call $copy (call $write_uint (call $copy (local.get $out) (i32.const 64) (i32.const 15))
                                                        (local.get $n))
                                      (i32.const 80) (i32.const 7)))
          (call $log (i32.const 1) (local.get $out) (i32.sub (local.get $end) (local.get $out)))
          (return (i64.const 0))))
      ;; "ping K+1/N"
      (local.set $end (call $copy (local.get $out) (i32.const 144) (i32.const 5)))
      (local.set $end (call $write_uint (local.get $end) (i32.add (local.get $k) (i32.const 1))))
      (local.set $end (call $copy (local.get $end) (i32.const 136) (i32.const 1)))
      (local.set $end (call $write_uint (local.get $end) (local.get $n)))
      (return (call $pack (local.get $out) (i32.sub (local.get $end) (local.get $out)))))
    ;; anything else from an agent is not part of a game
    (call $log (i32.const 2) (local.get $ptr) (local.get $len))
    (i64.const 0))
)
