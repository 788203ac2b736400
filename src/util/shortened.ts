/** `text` cut to `max` characters with an ellipsis, for echoing what a client sent in an error. */
export function shortened(text: string, max = 200): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}
