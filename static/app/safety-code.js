// The safety code of a connection (docs/PROTOCOL.md, section 8): two people read it aloud to
// check that nobody sits in the middle of their connection. No DOM.

/**
 * A short code from a connection's two DTLS fingerprints: SHA-256 of "signpost-safety-v1", then
 * the two fingerprints sorted, one per line; its first 3 bytes as a number mod 10^6, in two
 * groups of three digits. Both ends compute the same code; a party in the middle holds two
 * connections with other fingerprints, so the two people would read different codes. Null where
 * a fingerprint or WebCrypto is missing.
 */
export async function safetyCode(pc) {
  const fingerprints = [pc.localDescription?.sdp, pc.remoteDescription?.sdp].map(sdpFingerprint);
  if (fingerprints.includes(null) || !crypto.subtle) return null;
  fingerprints.sort();
  const text = `signpost-safety-v1\n${fingerprints.join("\n")}`;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
  const number = ((digest[0] << 16) | (digest[1] << 8) | digest[2]) % 1000000;
  return String(number).padStart(6, "0").replace(/^(\d{3})(\d{3})$/, "$1 $2");
}

/** The first `a=fingerprint` of `sdp` as "sha-256 AB:CD:…" (algorithm lower case, hex upper). */
function sdpFingerprint(sdp) {
  const match = /^a=fingerprint:(\S+) (\S+)/m.exec(sdp ?? "");
  return match ? `${match[1].toLowerCase()} ${match[2].toUpperCase()}` : null;
}
