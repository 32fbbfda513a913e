// This page's camera and microphone: asking for them, falling back to less (or to none), and
// turning a kind of track on and off. No DOM: room-ui.js shows what this module found.

/**
 * Asks for what `wanted` ("video", "audio" or "none") names, then for less on refusal or absence,
 * and continues as a data-only peer when nothing is given. Resolves to {stream, mode, failure}:
 * `stream` the MediaStream or null, `mode` what the page sends ("video", "audio" or "none"), and
 * `failure` the first error met (null when none).
 */
export async function acquireLocalMedia(wanted) {
  const attempts = { video: [{ audio: true, video: true }, { audio: true }], audio: [{ audio: true }], none: [] }[wanted];
  let failure = null;
  let stream = null;
  if (attempts.length > 0 && !navigator.mediaDevices?.getUserMedia) {
    attempts.length = 0;
    failure = { name: "InsecureContext" };
  }
  for (const constraints of attempts) {
    try {
      stream = await navigator.mediaDevices.getUserMedia(constraints);
      break;
    } catch (error) {
      failure = failure ?? error;
    }
  }
  const mode = stream ? (stream.getVideoTracks().length > 0 ? "video" : "audio") : "none";
  return { stream, mode, failure };
}

/** What went wrong getting the camera/microphone, for a person. */
export function mediaProblem(error) {
  switch (error?.name) {
    case "NotAllowedError": return "camera/microphone access was refused";
    case "NotFoundError": return "no camera/microphone found";
    case "NotReadableError": return "the camera/microphone is in use by another program";
    case "InsecureContext": return "camera/microphone need HTTPS (or localhost), and this page has neither";
    default: return `camera/microphone unavailable (${error?.message ?? error})`;
  }
}

/** Turns `stream`'s tracks of `kind` ("audio" or "video") on if off, off if on; returns whether on. */
export function toggleTracks(stream, kind) {
  const tracks = kind === "audio" ? stream.getAudioTracks() : stream.getVideoTracks();
  const enabled = !tracks[0].enabled;
  for (const track of tracks) track.enabled = enabled;
  return enabled;
}

/** Stops every track of `stream` (camera and microphone lights go off). */
export function stopTracks(stream) {
  stream?.getTracks().forEach((track) => track.stop());
}
